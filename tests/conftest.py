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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `slow` tests (processes, fits, DDP) first: pytest-xdist (pyproject's addopts) hands tests out in this
    order as workers free up, so the long ones are shared between the workers from the start and the run ends on
    short tests, rather than with one worker finishing a long test while the other idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: collection order otherwise
