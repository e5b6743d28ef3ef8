"""Shared pytest setup: make the repository root importable and keep CPU threads modest."""

import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a module: tiny models run fastest on one thread, and much slower with two on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
