"""Issue 18: a fit resumed mid-epoch continues with the batches the uninterrupted fit saw, in the same order.

The SIGKILL case runs `tests/scripts/kill_fit_order.py` (the tiny config on 44 images: 40 training images,
5 batches of 8 per epoch, 30 steps = 6 epochs, checkpoints every 3 steps, so the kill lands mid-epoch after
the first epoch). The loader-level cases check the state round trip and the end-of-epoch rule directly.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from pds_lightning.data.loading import EpochSampler, ResumableLoader

from helpers import clean_env

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SCRIPT = ROOT / "tests" / "scripts" / "kill_fit_order.py"


def read_log(path: Path) -> dict[int, str]:
    """step -> the line of the last batch logged at that step (a resumed run re-runs steps after its checkpoint)."""
    lines = {}
    for line in path.read_text().splitlines():
        lines[int(line.split(" ", 1)[0])] = line
    return lines


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_with_the_uninterrupted_batch_order(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (44, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images=images)
    env = clean_env()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(TINY), str(tmp_path), "30", "5",
                           "--data.source", str(tmp_path / "images.npz"), "--data.num_workers", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["clean_exit"] == 0 and report["killed_by"] == 9 and report["resume_exit"] == 0, report
    resumed_at = report["resumed_from_step"]
    assert resumed_at in (6, 9, 12), report  # mid-epoch (5 batches per epoch), after the first epoch

    clean, killed = read_log(tmp_path / "clean.log"), read_log(tmp_path / "killed.log")
    assert sorted(clean) == sorted(killed) == list(range(30))
    epochs = [int(clean[s].split()[1]) for s in range(30)]
    assert epochs == [s // 5 for s in range(30)]  # 6 epochs of 5 batches
    for step in range(30):
        assert killed[step] == clean[step], step
    # The killed log holds the steps after the checkpoint twice: once before the kill, once after the resume.
    raw = [int(line.split(" ", 1)[0]) for line in (tmp_path / "killed.log").read_text().splitlines()]
    first_resumed = raw.index(resumed_at, raw.index(resumed_at) + 1)
    assert raw[first_resumed:] == list(range(resumed_at, 30))
    # Each epoch shows every training image once: the order is a permutation, not sampling with replacement.
    for epoch in range(6):
        sums = sorted(float(v) for s in range(5 * epoch, 5 * epoch + 5) for v in clean[s].split()[3:])
        assert len(sums) == 40 and len(set(sums)) == 40


def loader(n: int = 23, batch_size: int = 4, seed: int = 7, world: int = 1, rank: int = 0) -> ResumableLoader:
    data = TensorDataset(torch.arange(n))
    return ResumableLoader(data, EpochSampler(data, seed, num_replicas=world, rank=rank), batch_size)


def batches(dl) -> list[list[int]]:
    return [b[0].tolist() for b in dl]


def test_order_is_the_seed_and_epoch_permutation():
    dl = loader()
    for epoch in (0, 1, 5):
        dl.sampler.set_epoch(epoch)
        order = torch.randperm(23, generator=torch.Generator().manual_seed(7 + epoch)).tolist()
        assert sum(batches(dl), []) == order
    assert batches(loader(seed=8)) != batches(loader(seed=7))


def test_state_after_k_batches_restores_the_rest_of_the_epoch_in_a_new_loader():
    first = loader()
    first.sampler.set_epoch(2)
    full = batches(first)
    for k in (0, 1, 3, 5):
        it = iter(first)
        for _ in range(k):
            next(it)
        state = first.state_dict()
        assert state == {"seed": 7, "epoch": 2, "consumed": 4 * k}
        fresh = loader(seed=123)  # the seed comes from the state
        fresh.load_state_dict(state)
        fresh.sampler.set_epoch(2)  # what Lightning does after restoring: must not drop the position
        assert batches(fresh) == full[k:]
        assert batches(fresh) == full  # the epoch after a resumed one is whole again
        fresh.sampler.set_epoch(3)
        assert sum(batches(fresh), []) == torch.randperm(23, generator=torch.Generator().manual_seed(10)).tolist()


def test_state_saved_at_the_end_of_an_epoch_resumes_at_the_next_epoch():
    dl = loader()
    dl.load_state_dict({"seed": 7, "epoch": 4, "consumed": 24})  # 6 batches of 4 >= 23 images
    assert dl.sampler.epoch == 5 and sum(batches(dl), []) == torch.randperm(
        23, generator=torch.Generator().manual_seed(12)).tolist()


def test_ranks_share_one_permutation_and_resume_their_own_shard():
    shards = [loader(n=24, batch_size=3, world=2, rank=r) for r in range(2)]
    order = torch.randperm(24, generator=torch.Generator().manual_seed(7)).tolist()
    assert [sum(batches(dl), []) for dl in shards] == [order[0::2], order[1::2]]
    for rank, dl in enumerate(shards):
        dl.load_state_dict({"seed": 7, "epoch": 0, "consumed": 6})  # two batches of 3 done on each rank
        assert sum(batches(dl), []) == order[rank::2][6:]
