"""Issue 18: loader defaults from the hardware: workers from the CPUs this process may use, pinned memory on CUDA."""

import os
import subprocess
import sys

import lightning as L
import pytest

from pds_lightning.data import ImageDataModule, Split, Stats
from pds_lightning.data.loading import default_num_workers


@pytest.mark.slow
@pytest.mark.parametrize("cpus, workers", [(1, 0), (2, 1), (3, 2), (9, 8), (64, 8)])
def test_default_workers_leave_one_cpu_and_stop_at_eight(cpus, workers):
    assert default_num_workers(cpus) == workers


def workers_under_affinity(cpus: set[int]) -> int:
    """ImageDataModule().num_workers in a process restricted to `cpus` (as taskset or Slurm would)."""
    code = ("import os, sys; os.sched_setaffinity(0, {%s}); from pds_lightning.data import ImageDataModule; "
            "print(ImageDataModule('mnist').num_workers)") % ",".join(map(str, sorted(cpus)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return int(out.stdout.strip())


def test_worker_default_honours_the_cpu_affinity():
    allowed = sorted(os.sched_getaffinity(0))
    assert workers_under_affinity({allowed[0]}) == 0
    if len(allowed) >= 2:
        assert workers_under_affinity(set(allowed[:2])) == 1
    assert ImageDataModule("mnist").num_workers == min(8, len(allowed) - 1)


def test_explicit_workers_win_and_negative_is_refused():
    assert ImageDataModule("mnist", num_workers=0).num_workers == 0
    assert ImageDataModule("mnist", num_workers=3).num_workers == 3
    with pytest.raises(ValueError, match="num_workers must be non-negative, got -1"):
        ImageDataModule("mnist", num_workers=-1)


@pytest.mark.parametrize("workers", [0, 1])
def test_loaders_under_a_cpu_trainer_are_unpinned_with_persistent_workers(workers):
    dm = ImageDataModule("mnist", num_workers=workers, split=Split(val_size=16), stats=Stats(num_images=0))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    dm.trainer = trainer
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        assert loader.pin_memory is False
        assert loader.num_workers == workers and loader.persistent_workers == (workers > 0)
