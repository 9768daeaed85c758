"""SIGKILL `pds-lightning predict` at random moments, then resume it to completion.

    python tests/scripts/kill_predict.py CONFIG CKPT WORKDIR SEEDS KILLS RNG_SEED

Writes WORKDIR/clean (one uninterrupted run), WORKDIR/killed (KILLS killed runs plus one resumed to the
end) and WORKDIR/report.json. The CLI is imported once and each run is a forked child process, so a run
costs its sampling time, not the ~7 s import (one thread each); the children are real processes killed with SIGKILL.
Each kill waits until the child has written a new PNG (it is sampling and writing), then a delay drawn
from random.Random(RNG_SEED) of up to 1.5 batch times, so five kills land well before the end.
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

from pds_lightning.cli import main

CONFIG, CKPT, WORK, SEEDS, KILLS, RNG_SEED = sys.argv[1:7]
WORK = Path(WORK)


def pngs(out: Path) -> dict[str, int]:
    """Name -> inode of every PNG under `out` (an inode that changes means the file was rewritten)."""
    return {p.name: p.stat().st_ino for p in out.rglob("*.png")} if out.is_dir() else {}


def spawn(out: Path, log: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # A forked child inherits the parent's thread-pool state; one thread avoids a 100x slowdown of
    # FFTs after fork (and equal settings in every run keep the numerics identical).
    torch.set_num_threads(1)
    code = 0
    try:
        main(["predict", "--config", CONFIG, "--ckpt_path", CKPT, "--trainer.logger", "false",
              "--trainer.default_root_dir", str(out.parent), "--trainer.enable_progress_bar", "false", "--data.seeds", SEEDS, "--data.predict_batch_size", "2",
              "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter", "--trainer.callbacks.output_dir", str(out)])
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(code)


def run_to_end(out: Path) -> int:
    _, status = os.waitpid(spawn(out, WORK / "log.txt"), 0)
    return os.waitstatus_to_exitcode(status)


report = {"clean_exit": run_to_end(WORK / "clean")}
manifest = json.loads((WORK / "clean" / "manifest.json").read_text())
batch_time = manifest["wall_time_s"] / max(manifest["num_written"] / 2, 1)
rng = random.Random(int(RNG_SEED))
killed = WORK / "killed"
inodes: dict[str, int] = {}
report["kills"] = []
for _ in range(int(KILLS)):
    before = len(pngs(killed))
    pid = spawn(killed, WORK / "log.txt")
    while len(pngs(killed)) == before and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.005)
    delay = rng.uniform(0.0, 1.5 * batch_time)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)  # no-op error if it already exited: then the status below says so
    _, status = os.waitpid(pid, 0)
    now = pngs(killed)
    rewritten = [n for n, ino in inodes.items() if now.get(n) != ino]
    inodes.update(now)
    report["kills"].append({"delay_s": round(delay, 4), "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status)
                            else None, "on_disk": len(now), "rewritten_or_lost": rewritten})
report["resume_exit"] = run_to_end(killed)
final = pngs(killed)
report["rewritten_or_lost_at_end"] = [n for n, ino in inodes.items() if final.get(n) != ino]
report["batch_time_s"] = batch_time
(WORK / "report.json").write_text(json.dumps(report, indent=1))
