"""Issue 31 item 11: a fit interrupted and resumed with `--ckpt_path last` ends with the uninterrupted fit's
weights and optimizer state, bit for bit (CPU).

Every run draws all of training's randomness: noise levels and noise (the loss), class-label dropout, network
dropout, flips, dequantisation and the shuffled order, over 40 training images in batches of 8 (5 per epoch),
so the 9 steps cross an epoch boundary. The interruptions are real signals sent by the process to itself at an
exact step (`helpers.SignalAtStep`): SIGTERM (exit 143, `preempted.ckpt`) mid-epoch with 0 and 2 loader
workers, and SIGKILL after the step-3 periodic checkpoint (the resume redoes steps 4 and 5).
Runs are forked children of the test process (`helpers.fork_cli`).
"""

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import fork_cli, wait_exit_code
from pds_lightning.preemption import EXIT_STATUS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
STEPS = 9  # a multiple of the checkpoint interval: last.ckpt holds the final state


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """44 labelled 16 px images: 40 for training (5 batches of 8), 4 held out for validation."""
    path = tmp_path_factory.mktemp("data") / "images.npz"
    rng = np.random.default_rng(5)
    np.savez(path, images=rng.integers(0, 256, (44, 16, 16), dtype=np.uint8), labels=np.arange(44) % 3)
    return path


def fit(work: Path, images: Path, *more: str) -> int:
    """`pds-lightning fit` of tiny.yaml with every random draw switched on, last.ckpt every 3 steps; its exit status."""
    ckpts = work / "checkpoints"
    args = ["fit", "--config", str(TINY), "--trainer.logger", "false", "--trainer.max_steps", str(STEPS),
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(work),
            "--data.source", str(images), "--data.stats_cache_dir", "", "--data.random_flip", "true",
            "--data.dequantize", "true", "--data.conditional", "true", "--model.net.init_args.num_classes", "3",
            "--model.label_dropout", "0.5", "--model.net.init_args.dropout", "0.5",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath",
            str(ckpts), "--trainer.callbacks.save_last", "true", "--trainer.callbacks.every_n_train_steps", "3",
            *more]
    return wait_exit_code(fork_cli(args, work / "log.txt"))


def interrupted(work: Path, images: Path, step: int, signum: int, *more: str) -> int:
    """fit with `signum` sent at `step`; returns its exit status (-signum when the signal killed it)."""
    return fit(work, images, *more, "--trainer.callbacks+=helpers.SignalAtStep", "--trainer.callbacks.step",
               str(step), "--trainer.callbacks.signum", str(int(signum)))


def final_state(work: Path) -> dict:
    ckpt = torch.load(work / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == STEPS
    return {"state_dict": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"][0]["state"]}


def differing(a: dict, b: dict) -> list[str]:
    """Names of the tensors of two final states that are not bit-for-bit equal."""
    flat = lambda s: {f"{part}.{k}.{n}" if isinstance(v, dict) else f"{part}.{k}": v
                      for part in s for k, value in s[part].items()
                      for n, v in (value.items() if isinstance(value, dict) else [(None, value)])}
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    return [k for k in fa if not torch.equal(fa[k], fb[k])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, images) -> dict:
    work = tmp_path_factory.mktemp("uninterrupted")
    assert fit(work, images, "--data.num_workers", "0") == 0, (work / "log.txt").read_text()[-3000:]
    return final_state(work)


@pytest.mark.parametrize("workers", [0, 2])
def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_fit(tmp_path, images, uninterrupted, workers):
    loader = ("--data.num_workers", str(workers))
    assert interrupted(tmp_path, images, 3, signal.SIGTERM, *loader) == EXIT_STATUS == 143
    preempted = tmp_path / "checkpoints" / "preempted.ckpt"
    assert torch.load(preempted, weights_only=True)["global_step"] == 3  # mid-epoch: batch 3 of 5
    assert fit(tmp_path, images, *loader, "--ckpt_path", str(preempted)) == 0
    assert differing(final_state(tmp_path), uninterrupted) == []


def test_sigkill_then_resume_from_the_last_periodic_checkpoint_equals_the_uninterrupted_fit(
        tmp_path, images, uninterrupted):
    assert interrupted(tmp_path, images, 5, signal.SIGKILL, "--data.num_workers", "0") == -signal.SIGKILL
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3  # steps 4 and 5 are lost and redone
    assert fit(tmp_path, images, "--data.num_workers", "0", "--ckpt_path", "last") == 0
    assert differing(final_state(tmp_path), uninterrupted) == []
