"""Every script ends an error a user can cause as the bundle's commands do (bundle/errors.py ``run_script``): one
``error:`` line naming the path, exit status 1, no traceback; ``--debug true`` or LH_UTANET_DEBUG=1 keeps it."""

import json
import os
import subprocess
import sys

import pytest
from bundle.errors import MissingFileError, debug_requested, run_script, without_debug_flag

from tests.helpers import REPO_ROOT

# Runs each script given as JSON [[name, target, args], ...] as ``__main__`` (target: a path under scripts/, or
# "-m module"), its stderr captured at the file descriptor (children included); prints {name: [exit code, stderr]}.
# One process for all: each script alone would import torch and MONAI again (seconds each).
DRIVER = """
import json, os, runpy, sys, tempfile, traceback
results = {}
for name, target, args in json.loads(sys.argv[1]):
    module = target[3:] if target.startswith("-m ") else None
    sys.argv = [module or target, *args]
    with tempfile.TemporaryFile(mode="w+") as stream:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(stream.fileno(), 2)
        try:
            runpy.run_module(module, run_name="__main__") if module else runpy.run_path(target, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code
            if isinstance(code, str):  # as the interpreter does: the message on stderr, status 1
                print(code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = "raised"
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        stream.seek(0)
        results[name] = [code, stream.read()]
print(json.dumps(results))
"""


def script_cases(tmp_path):
    """(name, target, arguments, the path the error must name) of each script, given a path that does not exist."""
    missing = tmp_path / "missing"
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    ckpt = str(missing / "model.pt")
    out = str(tmp_path / "out")
    return [
        ("plan", "scripts/plan.py", ["--dataset_dir", str(missing), "--output", f"{out}/plan.json"], missing),
        ("plan datalist", "scripts/plan.py", ["--dataset_dir", f"{missing}/datalist.json", "--output", out], missing),
        ("check_data", "scripts/check_data.py", [str(missing)], missing),
        ("prepare_datalist", "scripts/prepare_datalist.py", [str(missing)], missing),
        ("compare_models", "scripts/compare_models.py", ["--dataset_dir", str(missing), "--work_dir", out, "--output", out],
         missing),
        ("export_onnx", "scripts/export_onnx.py", ["--ckpt_file", ckpt, "--filepath", f"{out}/m.onnx"], ckpt),
        ("quantize", "scripts/quantize.py", ["--ckpt_file", ckpt, "--dataset_dir", str(missing), "--output", f"{out}/q.onnx"],
         ckpt),
        ("package_bundle", "scripts/package_bundle.py", ["--bundle-root", str(missing)], missing),
        ("train_two_stage", "scripts/train_two_stage.py", ["--dataset_dir", str(missing)], missing),
        ("train_folds", "scripts/train_folds.py", ["--work_dir", out, "--dataset_dir", str(missing)], missing),
        ("benchmark", "scripts/benchmark.py", ["--models", "unet", "--output", f"{a_file}/report.md"], a_file),
        ("compare_masks", "scripts/compare_masks.py", [str(missing), str(missing)], missing),
        ("expert_usage", "scripts/expert_usage.py", ["--ckpt", ckpt, "--dataset_dir", str(missing)], missing),
        ("write_large_files", "scripts/write_large_files.py", ["--bundle-root", str(missing)], missing),
        ("standard_table", "scripts/standard_table.py", ["--model", f"x={ckpt}", "--work_dir", out], ckpt),
        ("bench ensemble", "-m scripts.bench.ensemble", ["--ckpt", ckpt, "--ckpt", ckpt, "--no-write"], ckpt),
        ("bench video worker", "-m scripts.bench.video", ["--worker", "576p-notta", "--input", str(missing)], missing),
        ("fold domains", "-m scripts.folds.domains", [f"X={missing}"], missing),
    ]  # fmt: skip


def test_every_script_fails_in_one_line_naming_the_path(tmp_path):
    cases = script_cases(tmp_path)
    command = [sys.executable, "-c", DRIVER, json.dumps([[name, target, args] for name, target, args, _ in cases])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("LH_UTANET_DEBUG", None)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    for name, _, _, path in cases:
        code, stderr = outcomes[name]
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 1 and "Traceback" not in stderr, (name, code, stderr[-2000:])
        assert len(errors) == 1 and str(path) in errors[0], (name, stderr[-2000:])


def test_plan_py_on_a_missing_datalist_in_its_own_process_and_debug_keeps_the_traceback(tmp_path):
    """The issue's case, as a user runs it: ``python scripts/plan.py --dataset_dir DIR/datalist.json``."""
    datalist = tmp_path / "nowhere" / "datalist.json"
    command = [sys.executable, "scripts/plan.py", "--dataset_dir", str(datalist), "--output", str(tmp_path / "p.json")]
    env = {key: value for key, value in os.environ.items() if key != "LH_UTANET_DEBUG"}
    plain = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False, env=env)
    assert plain.returncode == 1 and plain.stderr.strip().splitlines() == [
        f"error: dataset_dir does not exist: {datalist}; pass a dataset folder or its datalist.json"
    ]
    debug = subprocess.run([*command, "--debug", "true"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "MissingFileError" in debug.stderr


def failing_main(argv):
    raise MissingFileError(f"no such thing: {argv}")


def test_run_script_takes_debug_out_of_the_arguments_and_keeps_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("LH_UTANET_DEBUG", "0")  # restored afterwards: run_script --debug sets it to 1
    assert run_script(failing_main, ["a", "--x", "1"]) == 1
    assert capsys.readouterr().err == "error: no such thing: ['a', '--x', '1']\n"
    assert run_script(lambda argv: {"a dict": argv}, []) == 0  # a main that returns its result: status 0
    with pytest.raises(ZeroDivisionError):  # a bug is no user error: its traceback stays
        run_script(lambda argv: 1 / 0, [])
    for argv in (["a", "--debug", "true"], ["a", "--debug=1"], ["--debug", "a"], ["a", "--debug"]):
        assert debug_requested(["prog", *argv]), argv
    assert without_debug_flag(["a", "--debug", "true", "--x", "--debug=0", "b"]) == ["a", "--x", "b"]
    assert without_debug_flag(["--debug", "a"]) == ["a"]
    with pytest.raises(MissingFileError):
        run_script(failing_main, ["a", "--debug", "true"])
    assert os.environ["LH_UTANET_DEBUG"] == "1"  # for the commands a script starts
