"""Suite-wide settings: tiny tensors, so one intra-op thread (extra threads only spin on a shared 2-core box)."""

import os

import pytest
import torch

# Subprocesses (CLI, DDP launchers) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
