"""Each run's config record (LightningCLI's config.yaml) is kept: a later run in the same log directory writes
its own record beside it, and a failed write leaves no partial record."""

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import clean_env
from pds_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"


def run(*args) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as err:
        assert err.code in (0, None), f"exit {err.code}"


def test_predict_keeps_the_fit_record_and_writes_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # tiny.yaml logs to runs/tiny with a fixed version: fit and predict share it
    run("fit", "--config", TINY, "--data.stats.cache_dir", "")
    log_dir = tmp_path / "runs" / "tiny"
    fit_record = (log_dir / "config.yaml").read_bytes()
    (ckpt,) = log_dir.rglob("*.ckpt")
    predict = ["predict", "--config", TINY, "--ckpt_path", ckpt, "--model.sampler.steps", 2]
    run(*predict, "--data.predict.seeds", "0-1")
    run(*predict, "--data.predict.seeds", "2-3")
    assert (log_dir / "config.yaml").read_bytes() == fit_record
    assert yaml.safe_load(fit_record)["ckpt_path"] is None
    first, second = (yaml.safe_load((log_dir / name).read_text())
                     for name in ("predict_config.yaml", "predict_config_1.yaml"))
    assert (first["data"]["predict"]["seeds"], second["data"]["predict"]["seeds"]) == ("0-1", "2-3")
    assert first["ckpt_path"] == second["ckpt_path"] == str(ckpt) and first["model"]["sampler"]["init_args"]["steps"] == 2
    assert sorted(p.name for p in log_dir.iterdir() if "config" in p.name) == [
        "config.yaml", "predict_config.yaml", "predict_config_1.yaml"]


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # `ulimit -f 1`: no file may grow past 1 kB


def test_a_record_that_cannot_be_written_whole_is_not_written(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pds_lightning", "fit", "--config", str(TINY), "--trainer.logger",
                           "false", "--trainer.default_root_dir", str(tmp_path / "run"), "--data.stats.cache_dir", "",
                           "--data.num_workers", "0"],  # workers pass batches through shared-memory files
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "cannot write the run's config record in" in lines[-1], proc.stderr[-3000:]
    assert "File too large" in lines[-1]
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no truncated config.yaml, no temp file
