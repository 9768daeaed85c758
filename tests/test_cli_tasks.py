"""`pds-lightning likelihood` and task predict from the command line: fit a tiny model (with val/bpd), score
bits/dim (the value of the module's own computation), inpaint with TaskWriter and see the TensorBoard rows."""

import math
import re
from pathlib import Path

import pytest
import torch

from test_cli import ROOT, run_cli

# Every test here starts processes (CLI runs, launchers, pip): outside the fast subset.
pytestmark = pytest.mark.slow

CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"


def test_fit_with_val_bpd_then_likelihood_and_inpainting(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli("fit", "--config", CONFIG, "--trainer.default_root_dir", tmp_path, "--data.stats.cache_dir",
            tmp_path / "stats", "--model.likelihood.val_images", 2, "--model.likelihood.n_steps", 2, cwd=tmp_path)
    ckpt = sorted(tmp_path.rglob("*.ckpt"))[-1]
    events = EventAccumulator(str(tmp_path / "runs" / "tiny"), size_guidance={"scalars": 0})
    events.Reload()
    assert "val/bpd" in events.Tags()["scalars"]

    args = ["--config", CONFIG, "--ckpt_path", ckpt, "--trainer.logger", "false", "--data.split.test_size", 3,
            "--model.likelihood.n_steps", 2, "--model.likelihood.estimator", "gaussian"]
    proc = run_cli("likelihood", *args, cwd=tmp_path)
    bpd = float(re.search(r"test/bpd\s+│?\s*([0-9.]+)", proc.stdout).group(1))

    from pds_lightning.cli import cli_main

    cli = cli_main(["--config", str(CONFIG), "--trainer.logger", "false", "--data.split.test_size", "3",
                    "--model.likelihood.n_steps", "2", "--model.likelihood.estimator", "gaussian"], run=False)
    module = cli.model
    module.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    batch = next(iter(cli.datamodule.setup_images().test_dataloader()))
    assert len(batch) == 3
    expected = module.bits_per_dim(batch, batch_idx=0).mean().item()
    assert math.isfinite(bpd) and abs(bpd - expected) < 1e-4 * max(1.0, abs(expected)), (bpd, expected)

    out = tmp_path / "filled"
    (tmp_path / "p").mkdir()
    run_cli("predict", "--config", CONFIG, "--ckpt_path", ckpt, "--trainer.default_root_dir", tmp_path / "p",
            "--data.predict.task", "pds_lightning.data.tasks.Inpaint", "--data.predict.task.source", "mnist",
            "--data.predict.task.indices", "0-1",
            "--data.predict.seeds", "5", "--trainer.callbacks+=pds_lightning.callbacks.TaskWriter",
            "--trainer.callbacks.output_dir", out, cwd=tmp_path / "p")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["000000/000005.png", "000001/000005.png"]
    events = EventAccumulator(str(tmp_path / "p" / "runs" / "tiny"))
    events.Reload()
    assert "inpaint/input_filled_truth" in events.Tags()["images"]
