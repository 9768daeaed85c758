"""SIGTERM a `pds-lightning` run once it is demonstrably mid-run, then rerun the same command to the end.

    python tests/scripts/term_run.py WORKDIR fit CONFIG MAX_STEPS
    python tests/scripts/term_run.py WORKDIR predict CONFIG CKPT SEEDS

fit: `--ckpt_path last` with a ModelCheckpoint every 2 steps; SIGTERM once its step-2 checkpoint exists.
predict: batches of one seed with a long corrector chain; SIGTERM once the first PNG exists (the second
batch is then being sampled). Each run is a forked child of this one import (helpers.fork_cli); logs go to
WORKDIR/log_first.txt and WORKDIR/log_rerun.txt. Report (WORKDIR/report.json): both exit statuses, the
seconds from SIGTERM to exit, what was on disk when the signal was sent and after the first run ended.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

from helpers import fork_cli, wait_exit_code

WORK, MODE, CONFIG = Path(sys.argv[1]).resolve(), sys.argv[2], sys.argv[3]
if MODE == "fit":
    ckpts = WORK / "checkpoints"
    args = ["fit", "--config", CONFIG, "--trainer.logger", "false", "--trainer.max_steps", sys.argv[4],
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(WORK), "--data.stats.cache_dir", "",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath",
            str(ckpts), "--trainer.callbacks.save_last", "true", "--trainer.callbacks.every_n_train_steps", "2",
            "--trainer.callbacks.save_top_k", "-1", "--ckpt_path", "last"]
    watched, mid_run = ckpts, lambda: (ckpts / "epoch=0-step=2.ckpt").exists()
else:
    out = WORK / "samples"
    args = ["predict", "--config", CONFIG, "--ckpt_path", sys.argv[4], "--trainer.logger", "false",
            "--trainer.default_root_dir", str(WORK), "--data.predict.seeds", sys.argv[5],
            "--data.predict.batch_size", "1",
            "--model.sampler.steps", "10", "--model.sampler.corrector.steps_per_level", "20",
            "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter", "--trainer.callbacks.output_dir", str(out)]
    watched, mid_run = out, lambda: any(out.rglob("*.png"))


def on_disk() -> list[str]:
    return sorted(str(p.relative_to(watched)) for p in watched.rglob("*") if p.is_file()) if watched.exists() else []


report = {}
pid = fork_cli(args, WORK / "log_first.txt")
while not mid_run() and os.waitpid(pid, os.WNOHANG) == (0, 0):
    time.sleep(0.005)
report["at_signal"] = on_disk()
sent = time.monotonic()
os.kill(pid, signal.SIGTERM)
report["first_exit"] = wait_exit_code(pid)
report["stop_s"] = time.monotonic() - sent
report["after_first"] = on_disk()
report["rerun_exit"] = wait_exit_code(fork_cli(args, WORK / "log_rerun.txt"))
(WORK / "report.json").write_text(json.dumps(report, indent=1))
