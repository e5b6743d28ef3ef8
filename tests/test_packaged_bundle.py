"""The packaged bundle on its own: unpacked from the MONAI Label zip, or as the model-zoo layout, every shipped script
runs (``--help``) from there with a python that cannot see this repository; folders are 755, files 644; and
``pyproject.toml`` (shipped for ``scripts/setup_env.sh``) builds and carries the metadata's version."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from scripts.package_bundle import BUNDLE_NAME, MODEL_ZOO_NAME, PackagingError, check_metadata, check_pyproject_version
from scripts.package_bundle import main as package

from tests.helpers import REPO_ROOT

# the scripts: modules of scripts/ that run as __main__ (not __init__.py or the torchvision stand-in)
SCRIPTS = sorted(path.name for path in (REPO_ROOT / "scripts").glob("*.py") if "__name__ == " in path.read_text())
SLOW_HELP_CPU_S = 20  # CPU seconds: a --help that takes longer imports far more than it needs (torch + monai: ~5)

# Run in the packaged folder by the clean python: each shipped script's --help (as ``python scripts/X.py --help``
# would; their names are the arguments), then imports every module of the shipped packages; prints one JSON line: the
# exit codes, and the file each module came from.
CHECK_ALL = """
import contextlib, importlib, io, json, pkgutil, runpy, sys
from pathlib import Path
exits = {}
for script in [Path("scripts", name) for name in sys.argv[1:]]:
    sys.argv = [str(script), "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            runpy.run_path(str(script), run_name="__main__")
        exits[script.name] = "no exit"
    except SystemExit as stop:
        exits[script.name] = stop.code
    except BaseException as error:
        exits[script.name] = repr(error)
for top in ("bundle", "scripts"):
    package = importlib.import_module(top)
    for module in pkgutil.walk_packages(package.__path__, f"{top}."):
        importlib.import_module(module.name)
files = {name: getattr(module, "__file__", None) for name, module in list(sys.modules.items())}
print(json.dumps({"exits": exits, "files": files}))
"""


def run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python args`` in ``cwd`` with ``cwd`` as the only PYTHONPATH entry (as the model zoo's verify_bundle and
    MONAI Label put the bundle folder on sys.path), one thread, no bytecode written."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(PYTHONPATH=str(cwd), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory) -> Path:
    """A python that imports .venv's third-party packages (torch, monai, ...) but not this repository.

    .venv's editable install of this repository is a .pth file in its site-packages that installs an import hook
    mapping ``bundle`` and ``scripts`` to this checkout; the hook serves any module that the packaged folder lacks
    (``scripts.bench`` was missing from the zip unnoticed). A throwaway venv whose only .pth names .venv's
    site-packages as plain paths puts those packages on sys.path without executing .venv's .pth files, so the hook is
    never installed. The fixture checks that ``bundle`` and ``scripts`` are then importable from nowhere (cwd and
    PYTHONPATH a folder outside the repository), so whatever the tests below import comes from the packaged folder.
    """
    root = tmp_path_factory.mktemp("clean_python")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = subprocess.run([str(python), "-c", query], capture_output=True, text=True, check=True).stdout
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    Path(site_packages.strip(), "venv_packages.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    for name in ("bundle", "scripts"):
        probe = run(python, "-c", f"import {name}", cwd=root)
        assert f"No module named '{name}'" in probe.stderr, f"the clean python sees this repository's {name}"
    assert run(python, "-c", "import torch, monai", cwd=root).returncode == 0
    return python


@pytest.fixture(scope="module")
def unpacked_zip(tmp_path_factory) -> tuple[Path, Path]:
    """The MONAI Label zip (with the weights, as docs/monailabel.md makes it) and the folder it was unpacked into."""
    tmp = tmp_path_factory.mktemp("zip")
    output = tmp / "lh_utanet.zip"
    assert package(["--output", str(output), "--include-weights"]) == 0
    with zipfile.ZipFile(output) as archive:
        archive.extractall(tmp / "unpacked")
    return output, tmp / "unpacked" / BUNDLE_NAME


@pytest.fixture(scope="module")
def model_zoo(tmp_path_factory) -> Path:
    """The model-zoo layout (no weights), written under umask 077 (its modes must not come from the umask)."""
    zoo = tmp_path_factory.mktemp("zoo") / "models"
    weights_url = (REPO_ROOT / "models").as_uri()
    umask = os.umask(0o077)
    try:
        assert package(["--model-zoo", str(zoo), "--weights-url", weights_url]) == 0
    finally:
        os.umask(umask)
    return zoo / MODEL_ZOO_NAME


def test_the_package_holds_every_package_and_what_setup_env_needs(unpacked_zip):
    """Derived from the tree: every file under scripts/ and bundle/ (a new package or stand-in file included)."""
    output, _ = unpacked_zip
    with zipfile.ZipFile(output) as archive:
        names = {name.removeprefix(f"{BUNDLE_NAME}/") for name in archive.namelist()}
    in_tree = {
        path.relative_to(REPO_ROOT).as_posix()
        for folder in ("bundle", "scripts")
        for path in (REPO_ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and not path.name.startswith(".")
    }
    assert in_tree - names == set()
    assert {"scripts/bench/__init__.py", "scripts/setup_env.sh", "pyproject.toml", "requirements.txt"} <= names
    # the MONAI Label app (docs/monailabel.md copies it from the unpacked zip); no __init__.py above lib/, so that
    # importing every module of ``scripts`` (below) never imports its main.py, which needs MONAI Label
    app = {"main.py", "lib/__init__.py", "lib/qc.py", "lib/ordering.py"}
    assert {f"scripts/monailabel_app/{name}" for name in app} <= names
    assert "scripts/monailabel_app/__init__.py" not in names
    packages = {path.parent for path in (REPO_ROOT / "scripts").rglob("__init__.py")}
    assert all(f"{package.relative_to(REPO_ROOT).as_posix()}/__init__.py" in names for package in packages)


def test_every_file_the_shipped_docs_link_to_is_shipped(unpacked_zip):
    """A relative link of a shipped Markdown file whose target is in the repository (a figure, a results table) finds
    it in the package too."""
    _, root = unpacked_zip
    missing = []
    for page in root.rglob("*.md"):
        for target in re.findall(r"\]\(([^)#\s]+)", page.read_text(encoding="utf-8")):
            relative = Path(os.path.relpath(page.parent / target, root))  # docs/../LICENSE -> LICENSE
            if "://" in target or relative.parts[0] == "..":
                continue
            if (REPO_ROOT / relative).exists() and not (root / relative).exists():
                missing.append(f"{page.relative_to(root)} -> {target}")
    assert not missing, f"shipped docs link to files the package lacks: {missing}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_script_runs_from_the_unpacked_zip(clean_python, unpacked_zip, script):
    _, root = unpacked_zip
    assert (root / "scripts" / script).is_file(), f"scripts/{script} is not in the zip"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run(clean_python, f"scripts/{script}", "--help", cwd=root)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, f"scripts/{script} --help failed in the unpacked zip:\n{result.stderr}"
    assert "usage:" in result.stdout
    seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # CPU time: the same on a busy host
    assert seconds < SLOW_HELP_CPU_S, f"scripts/{script} --help took {seconds:.0f} CPU s: it imports more than needed"


def test_every_script_and_module_runs_from_the_model_zoo_layout(clean_python, model_zoo, tmp_path):
    """All scripts' --help and all modules in one process (one torch import), each from the layout's folder, after
    MONAI's download_large_files fetched the weights (as the model zoo's verify_bundle and its users do first)."""
    from monai.bundle import download_large_files

    model_zoo = Path(shutil.copytree(model_zoo, tmp_path / MODEL_ZOO_NAME))
    download_large_files(bundle_path=str(model_zoo))
    result = run(clean_python, "-c", CHECK_ALL, *SCRIPTS, cwd=model_zoo)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["exits"] == dict.fromkeys(SCRIPTS, 0)
    files = {name: file for name, file in report["files"].items() if file}
    ours = {name: file for name, file in files.items() if name.split(".")[0] in ("bundle", "scripts")}
    assert {"bundle", "scripts.bench", "scripts.package_bundle"} <= set(ours)
    assert all(Path(file).is_relative_to(model_zoo) for file in ours.values()), ours
    venv = Path(sys.prefix)  # .venv may lie inside the repository: its third-party packages are meant to load
    leaked = [
        file for file in files.values() if Path(file).is_relative_to(REPO_ROOT) and not Path(file).is_relative_to(venv)
    ]
    assert not leaked


def test_folders_are_755_and_files_644(unpacked_zip, model_zoo):
    """In the zip (the modes ``unzip`` applies) and in the model-zoo folder, which was written under umask 077."""
    output, _ = unpacked_zip
    with zipfile.ZipFile(output) as archive:
        zip_modes = {info.filename.rstrip("/"): info.external_attr >> 16 for info in archive.infolist()}
    assert zip_modes[BUNDLE_NAME] == zip_modes[f"{BUNDLE_NAME}/scripts/bench"] == 0o040755
    assert zip_modes[f"{BUNDLE_NAME}/scripts/setup_env.sh"] == 0o100755  # starts with #!
    zoo_modes = {path: path.stat().st_mode for path in [model_zoo, *model_zoo.rglob("*")]}
    for modes in (zip_modes, zoo_modes):
        files = {str(path): mode for path, mode in modes.items() if not stat.S_ISDIR(mode)}
        folders = {str(path): mode for path, mode in modes.items() if stat.S_ISDIR(mode)}
        assert folders and set(folders.values()) == {0o040755}
        executable = {path for path in files if path.endswith("setup_env.sh")}
        assert len(executable) == 1 and files.pop(executable.pop()) == 0o100755
        assert set(files.values()) == {0o100644}, {path: oct(mode) for path, mode in files.items()}


def test_shipped_pyproject_builds_the_packages_setup_env_installs(unpacked_zip, tmp_path):
    """``scripts/setup_env.sh`` ends with ``pip install -e .``: the shipped pyproject.toml must build both packages."""
    _, root = unpacked_zip
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    result = subprocess.run([*command, "-w", str(tmp_path), str(root)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"bundle/__init__.py", "scripts/bench/__init__.py", "scripts/package_bundle.py"} <= names


def test_pyproject_version_is_the_metadata_version():
    version = check_metadata(REPO_ROOT / "configs" / "metadata.json")
    try:
        check_pyproject_version(REPO_ROOT, version)
    except PackagingError as error:
        pytest.fail(str(error))


def test_pyproject_version_check_names_the_fix(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0.0.1"\n')
    with pytest.raises(PackagingError, match='0.0.1 differs .* set version = "9.8.7" under \\[project\\]'):
        check_pyproject_version(tmp_path, "9.8.7")
