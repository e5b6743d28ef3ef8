"""The MONAI model zoo's code-format checks on this repository, with its settings (setup.cfg, pyproject.toml)."""

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
