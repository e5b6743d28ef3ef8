"""Shared pytest setup: keep CPU threads modest. (``bundle`` and ``scripts`` import through the editable install
of scripts/setup_env.sh.)"""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread for a module: tiny models run fastest on one thread, and much slower with two on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
