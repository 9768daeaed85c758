"""SIGKILL `pds-lightning fit` at a random moment after its first `last.ckpt`, then resume with `--ckpt_path last`.

    python tests/scripts/kill_fit.py CONFIG WORKDIR MAX_STEPS RNG_SEED

The killed run saves last.ckpt every 2 steps (ModelCheckpoint save_last + every_n_train_steps). The step time
is measured between its first two checkpoints, and the kill comes a delay drawn from random.Random(RNG_SEED)
of up to KILL_WITHIN_STEPS step times later, so it lands mid-run on a slow or a fast machine. Before
resuming, WORKDIR/killed_last.ckpt keeps a copy of what the resumed run must start from. The resumed run
carries `RestoreProbe`, which saves the module and datamodule state at `on_train_start` (after the
restore) to WORKDIR/restored.pt and the final state to WORKDIR/final.pt. Report: WORKDIR/report.json.
Children are forked from one import of the CLI (helpers.fork_cli).
"""

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import torch

from helpers import fork_cli, kill_and_wait, wait_exit_code


KILL_WITHIN_STEPS = 10  # the kill lands within 10 step times after step 4, far from the end (MAX_STEPS 30)


class RestoreProbe(L.Callback):
    """Saves what the resumed run holds when training starts and when it ends."""

    def __init__(self, path: str):
        self.path = Path(path)

    def _save(self, name, trainer, module):
        stats = trainer.datamodule.statistics
        torch.save({"global_step": trainer.global_step, "ema_num_updates": int(module.ema_num_updates),
                    "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
                    "dm_stat_count": None if stats is None else stats.count}, self.path / name)

    def on_train_start(self, trainer, module):
        self._save("restored.pt", trainer, module)

    def on_train_end(self, trainer, module):
        self._save("final.pt", trainer, module)


if __name__ == "__main__":
    CONFIG, WORK, MAX_STEPS, RNG_SEED = sys.argv[1:5]
    WORK = Path(WORK).resolve()
    ckpt_dir = WORK / "checkpoints"
    common = ["fit", "--config", CONFIG, "--trainer.logger", "false", "--trainer.max_steps", MAX_STEPS,
              "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(WORK),
              "--data.stats.cache_dir", "",
              "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
              "--trainer.callbacks.dirpath", str(ckpt_dir), "--trainer.callbacks.save_last", "true",
              "--trainer.callbacks.every_n_train_steps", "2", "--trainer.callbacks.save_top_k", "-1"]
    report = {}
    pid = fork_cli(common, WORK / "log.txt")
    last = ckpt_dir / "last.ckpt"
    times = []  # when the 1st and 2nd step checkpoints (steps 2 and 4) appeared
    while len(times) < 2 and os.waitpid(pid, os.WNOHANG) == (0, 0):
        if len(list(ckpt_dir.glob("*step=*.ckpt"))) > len(times) and last.exists():
            times.append(time.monotonic())
        time.sleep(0.005)
    step_time = (times[1] - times[0]) / 2 if len(times) == 2 else 0.0
    delay = random.Random(int(RNG_SEED)).uniform(0.0, KILL_WITHIN_STEPS * step_time)
    time.sleep(delay)
    report["killed_by"] = kill_and_wait(pid)
    report["delay_s"] = delay
    report["step_time_s"] = step_time
    shutil.copy(last, WORK / "killed_last.ckpt")
    # kill_fit.RestoreProbe imports: this script's folder is sys.path[0] (in the forked child too).
    # The resumed run estimates statistics from fewer images: the checkpoint's must win.
    resume = common + ["--ckpt_path", "last", "--data.stats.num_images", "16",
                       "--trainer.callbacks+=kill_fit.RestoreProbe", "--trainer.callbacks.path", str(WORK)]
    report["resume_exit"] = wait_exit_code(fork_cli(resume, WORK / "log.txt"))
    (WORK / "report.json").write_text(json.dumps(report))
