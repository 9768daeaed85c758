"""The batch order of a fit SIGKILLed mid-epoch and resumed, next to an uninterrupted fit's.

    python tests/scripts/kill_fit_order.py CONFIG WORKDIR MAX_STEPS RNG_SEED [extra CLI args...]

Both runs carry `BatchLog`, which appends one line per training batch (global step, epoch, batch index, and
the per-image pixel sums) to WORKDIR/<run>.log. The killed run saves last.ckpt every 3 steps and is
SIGKILLed a random delay (random.Random(RNG_SEED)) of up to 4 step times after its second checkpoint, then
resumed with `--ckpt_path last` into the same log. Report: WORKDIR/report.json (kill signal, resume exit,
the step of the checkpoint it resumed from).
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch

from helpers import fork_cli


class BatchLog(L.Callback):
    """One line per training batch: step, epoch, batch_idx and the images' pixel sums (exact float32 reprs)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sums = " ".join(repr(float(s)) for s in batch.flatten(1).sum(1))
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {trainer.current_epoch} {batch_idx} {sums}\n")


if __name__ == "__main__":
    CONFIG, WORK, MAX_STEPS, RNG_SEED, *EXTRA = sys.argv[1:]
    WORK = Path(WORK).resolve()
    sys.path.insert(0, str(Path(__file__).parent))

    def args(name: str, *more: str) -> list[str]:
        return ["fit", "--config", CONFIG, "--trainer.logger", "false", "--trainer.max_steps", MAX_STEPS,
                "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(WORK / name),
                "--data.stats.cache_dir", "", *EXTRA, *more,
                "--trainer.callbacks+=kill_fit_order.BatchLog", "--trainer.callbacks.path", str(WORK / f"{name}.log")]

    report = {}
    _, status = os.waitpid(fork_cli(args("clean"), WORK / "out.txt"), 0)
    report["clean_exit"] = os.waitstatus_to_exitcode(status)

    ckpt_dir = WORK / "killed" / "checkpoints"
    checkpointing = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                     "--trainer.callbacks.dirpath", str(ckpt_dir), "--trainer.callbacks.save_last", "true",
                     "--trainer.callbacks.every_n_train_steps", "3", "--trainer.callbacks.save_top_k", "-1"]
    pid = fork_cli(args("killed", *checkpointing), WORK / "out.txt")
    last, times = ckpt_dir / "last.ckpt", []
    while len(times) < 2 and os.waitpid(pid, os.WNOHANG) == (0, 0):
        if len(list(ckpt_dir.glob("*step=*.ckpt"))) > len(times) and last.exists():
            times.append(time.monotonic())
        time.sleep(0.005)
    step_time = (times[1] - times[0]) / 3 if len(times) == 2 else 0.0
    time.sleep(random.Random(int(RNG_SEED)).uniform(0.0, 4 * step_time))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    report["killed_by"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    report["resumed_from_step"] = torch.load(last, weights_only=True)["global_step"]
    _, status = os.waitpid(fork_cli(args("killed", *checkpointing, "--ckpt_path", "last"), WORK / "out.txt"), 0)
    report["resume_exit"] = os.waitstatus_to_exitcode(status)
    (WORK / "report.json").write_text(json.dumps(report))
