"""The MONAI model zoo's code-format checks on this repository, with its settings (setup.cfg, pyproject.toml)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT

CHECKS = {
    "black": ["black", "--skip-magic-trailing-comma", "--check", "--quiet", "."],
    "isort": ["isort", "--check-only", "--quiet", "."],
    "flake8": ["flake8", "."],  # with flake8-bugbear, -comprehensions, -executable and pep8-naming
}


@pytest.mark.parametrize("tool", CHECKS)
def test_code_format(tool):
    result = subprocess.run(
        [sys.executable, "-m", *CHECKS[tool]], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{tool} found problems (fix with black/isort):\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.json")), ids=lambda path: path.name)
def test_config_json_is_as_the_model_zoo_formats_it(path):
    """The model zoo's pre-commit hook (pretty-format-json --autofix --no-sort-keys --indent=4) would rewrite any
    config that differs from this: indent 4, keys in their order, non-ASCII escaped, one final newline."""
    text = path.read_text(encoding="utf-8")
    assert (
        text == json.dumps(json.loads(text), indent=4) + "\n"
    ), f"{path.name} is not formatted as the model zoo's hook wants"
