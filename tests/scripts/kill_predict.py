"""SIGKILL `pds-lightning predict` at random moments, then resume it to completion.

    python tests/scripts/kill_predict.py CONFIG CKPT WORKDIR SEEDS KILLS RNG_SEED

Writes WORKDIR/clean (one uninterrupted run), WORKDIR/killed (KILLS killed runs plus one resumed to the
end) and WORKDIR/report.json. The CLI is imported once and each run is a forked child process, so a run
costs its sampling time, not the ~7 s import (one thread each; helpers.fork_cli); the children are real processes
killed with SIGKILL.
Each kill waits until the child has written a new PNG (it is sampling and writing), then a delay drawn
from random.Random(RNG_SEED) of up to 1.5 batch times, so each kill advances at most about 2.5 batches and the
kills land before the end.
"""

import json
import os
import random
import sys
import time
from pathlib import Path

from helpers import fork_cli, kill_and_wait, wait_exit_code

CONFIG, CKPT, WORK, SEEDS, KILLS, RNG_SEED = sys.argv[1:7]
WORK = Path(WORK)


def pngs(out: Path) -> dict[str, int]:
    """Name -> inode of every PNG under `out` (an inode that changes means the file was rewritten)."""
    return {p.name: p.stat().st_ino for p in out.rglob("*.png")} if out.is_dir() else {}


def spawn(out: Path, log: Path) -> int:
    return fork_cli(["predict", "--config", CONFIG, "--ckpt_path", CKPT, "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(out.parent), "--trainer.enable_progress_bar", "false",
                     "--data.predict.seeds", SEEDS, "--data.predict.batch_size", "2",
                     "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter",
                     "--trainer.callbacks.output_dir", str(out)], log)


def run_to_end(out: Path) -> int:
    return wait_exit_code(spawn(out, WORK / "log.txt"))


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
    killed_by = kill_and_wait(pid)  # None if it had already exited
    now = pngs(killed)
    rewritten = [n for n, ino in inodes.items() if now.get(n) != ino]
    inodes.update(now)
    report["kills"].append({"delay_s": round(delay, 4), "signal": killed_by, "on_disk": len(now), "rewritten_or_lost": rewritten})
report["resume_exit"] = run_to_end(killed)
final = pngs(killed)
report["rewritten_or_lost_at_end"] = [n for n, ino in inodes.items() if final.get(n) != ino]
report["batch_time_s"] = batch_time
(WORK / "report.json").write_text(json.dumps(report, indent=1))
