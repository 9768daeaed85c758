"""SIGTERM (preemption) through the `pds-lightning` command: the run stops promptly with a non-zero status,
keeps what is complete (a checkpoint for fit, whole PNGs for predict), and the same command resumes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import clean_env
from pds_lightning.preemption import EXIT_STATUS

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SCRIPT = ROOT / "tests" / "scripts" / "term_run.py"
MAX_STEPS = 12


def term_run(workdir: Path, *args) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), str(workdir), *map(str, args)], env=clean_env(),
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((workdir / "report.json").read_text())


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("term_fit")
    return work, term_run(work, "fit", TINY, MAX_STEPS)


def last_line(log: Path) -> str:
    return [line for line in log.read_text().splitlines() if line.strip()][-1]


def test_fit_stops_with_a_checkpoint_and_the_same_command_resumes(fit_run):
    work, report = fit_run
    assert report["first_exit"] == EXIT_STATUS == 143, report
    preempted = work / "checkpoints" / "preempted.ckpt"
    assert str(preempted.relative_to(work / "checkpoints")) not in report["at_signal"]
    assert "preempted.ckpt" in report["after_first"], report  # saved on the way out
    line = last_line(work / "log_first.txt")
    assert line.startswith("pds-lightning: stopped by SIGTERM: step ") and str(preempted) in line, line
    step = int(line.split("step ")[1].split()[0])
    assert 2 <= step < MAX_STEPS  # stopped mid-run, within steps of the signal
    # The same command (`--ckpt_path last`) picked the SIGTERM checkpoint, finished, and cleared it.
    assert report["rerun_exit"] == 0
    rerun_log = (work / "log_rerun.txt").read_text()
    assert f"Restoring states from the checkpoint path at {preempted}" in rerun_log
    assert not preempted.exists()
    final = torch.load(work / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == MAX_STEPS and int(final["state_dict"]["ema_num_updates"]) == MAX_STEPS
    resumed_first = torch.load(work / "checkpoints" / f"epoch=0-step={step + 2 - step % 2}.ckpt", weights_only=True)
    assert resumed_first["global_step"] == step + 2 - step % 2  # the step count continued from the saved one


def test_predict_stops_mid_batch_keeps_whole_pngs_and_the_rerun_finishes(fit_run, tmp_path):
    work, _ = fit_run
    report = term_run(tmp_path, "predict", TINY, work / "checkpoints" / "last.ckpt", "0-1")
    assert report["first_exit"] == EXIT_STATUS, report
    # Signalled while the second seed's batch was sampling: it stopped inside that batch, not after it.
    # (manifest.json records the run before its first PNG, complete: false)
    assert report["at_signal"] == report["after_first"] == ["000/000000.png", "manifest.json"], report
    assert "stopped by SIGTERM: complete outputs are kept" in last_line(tmp_path / "log_first.txt")
    assert report["rerun_exit"] == 0
    out = tmp_path / "samples"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "000", "000/000000.png", "000/000001.png", "manifest.json"]  # no temp files
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_skipped_existing"] == 1 and manifest["num_written"] == 1 and manifest["num_on_disk"] == 2
