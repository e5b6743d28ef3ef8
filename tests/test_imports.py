"""The package's import graph: no module of ``bundle/`` imports, directly or through others, a module that imports it
back (``TYPE_CHECKING`` imports included), and the default encoder is named in one place."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from bundle.networks import DEFAULT_ENCODER, ENCODERS, LightweightHierarchicalUTANet

from tests.helpers import CONFIGS, REPO_ROOT


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (a package's ``__init__`` is not counted as imported by its
    own submodules, and ``from . import x`` counts as importing ``x``)."""
    files = {module_name(path, package): path for path in package.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join(prefix + ([node.module] if node.module else []))
                targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
            for target in targets:
                found = known(target) if target.split(".")[0] == package.name else None
                if found and found != name and not name.startswith(found + "."):
                    graph[name].add(found)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_bundle_has_no_import_cycle():
    graph = import_graph(REPO_ROOT / "bundle")
    assert (
        "bundle.inference.writers" in graph["bundle.inference.folder"]
        or "bundle.inference.folder" in graph["bundle.inference.writers"]
    )
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import a\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.b import B\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("from ..a import A\n")
    (package / "c.py").write_text("import pkg.a\n")
    assert import_cycles(import_graph(package)) == [["pkg.a", "pkg.sub.b"]]


def test_one_default_encoder():
    train = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))
    assert train["encoder"] == DEFAULT_ENCODER
    network = LightweightHierarchicalUTANet()
    assert type(network.encoder) is ENCODERS[DEFAULT_ENCODER].cls


LAYERS = ("core", "networks", "data", "training", "backends", "inference", "video", "evaluation")


def layer(module: str) -> int:
    """The layer of a ``bundle`` module: its package's place in :data:`LAYERS`; top-level modules are the core."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 or parts[-1] in LAYERS else 0


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name != "bundle"
        for target in targets
        if layer(target) > layer(name)
    ]


def test_no_package_imports_a_higher_layer():
    graph = import_graph(REPO_ROOT / "bundle")
    assert set(LAYERS[1:]) <= {name.split(".")[1] for name in graph if name.count(".") >= 1}
    assert layer_violations(graph) == []


def test_layer_check_finds_an_upward_import():
    graph = {"bundle.data.splits": {"bundle.inference.tta"}, "bundle.inference.tta": {"bundle.errors"}}
    assert layer_violations(graph) == ["bundle.data.splits -> bundle.inference.tta"]


def test_bundle_has_few_top_level_modules():
    modules = sorted(path.name for path in (REPO_ROOT / "bundle").glob("*.py"))
    assert len(modules) <= 8, modules


def test_no_sys_path_insertion():
    edit = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*(\+?=)")
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for folder in ("bundle", "scripts", "tests")
        for path in (REPO_ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if edit.search(line) and path.name != "test_imports.py"
    ]
    assert found == []


def test_every_bundle_name_in_the_configs_resolves_after_import_bundle_alone():
    """Configs write ``$bundle.a.b.name``: after ``import bundle`` (as ``python -m monai.bundle run`` does, in a fresh
    interpreter) each package on the way must already be an attribute of its parent."""
    names = sorted(
        {
            name
            for path in CONFIGS.glob("*.json")
            for name in re.findall(r"\bbundle(?:\.[A-Za-z_]\w*)+", path.read_text(encoding="utf-8"))
        }
    )
    code = "import bundle, functools; [functools.reduce(getattr, n.split('.')[1:], bundle) for n in %r]" % names
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is now" not in result.stderr  # no old module name left in the configs
