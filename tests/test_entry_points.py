"""Every checkpoint the project writes works in every entry point, through the `pds-lightning` command.

The matrix is {checkpoint kind} x {fit resume, validate, test, likelihood, predict, export, load_from_checkpoint}.
A checkpoint kind is a module-scoped fixture (built once) returning a `Kind`; adding a converter is one line
in KINDS plus its fixture.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pds_lightning.cli import load_checkpoint_safely, main
from pds_lightning.module import ScoreModule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SCORE_SDE_CKPT = ROOT / "tests" / "fixtures" / "ncsnpp_ve_tiny.checkpoint.pth"
SCORE_SDE_CONFIG = ROOT / "tests" / "fixtures" / "ncsnpp_ve_tiny.yaml"
OLD_PLAIN_CKPT = ROOT / "tests" / "fixtures" / "tiny_flat_sampler_conditional.ckpt"

SEEDS = 2
# Cheap settings shared by every entry point: no logger, 2 sampler / ODE steps, one validation batch.
CHEAP = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary",
         "false", "--trainer.limit_val_batches", "1", "--data.stats.cache_dir", "", "--data.predict.seeds",
         f"0-{SEEDS - 1}", "--model.sampler.steps", "2", "--data.split.test_size", "2", "--model.likelihood.n_steps",
         "2", "--model.likelihood.estimator", "gaussian"]


@dataclass
class Kind:
    """A checkpoint, the command-line options of a config its model matches, and the step it was saved at."""

    ckpt: Path
    args: list[str]
    step: int
    has_writer: bool = False  # the config already names a SampleWriter (convert-diffusers writes one)
    nfe_per_step: int = 2  # predictor + corrector steps per PC step of its sampler


def run(*args) -> None:
    """`pds-lightning ARGS` in this process; a non-zero exit fails the test."""
    try:
        main([str(a) for a in args])
    except SystemExit as err:
        assert err.code in (0, None), f"exit {err.code}"


@pytest.fixture(scope="module")
def fit_checkpoint(tmp_path_factory) -> Kind:
    """tests/configs/tiny.yaml's 3-step fit (MNIST, 1x16x16; its checkpoint is saved at the validation)."""
    work = tmp_path_factory.mktemp("fit")
    args = ["--config", TINY, *CHEAP]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        run("fit", *args, "--trainer.default_root_dir", work)
    (ckpt,) = work.rglob("*.ckpt")
    return Kind(ckpt, args, 3)


@pytest.fixture(scope="module")
def converted_checkpoint(tmp_path_factory) -> Kind:
    """`convert-score-sde` of the tiny score_sde NCSN++ (3x16x16, saved at score_sde step 7)."""
    work = tmp_path_factory.mktemp("convert")
    run("convert-score-sde", SCORE_SDE_CKPT, "--config", SCORE_SDE_CONFIG, "--output", work / "converted.ckpt")
    args = ["--config", SCORE_SDE_CONFIG, "--trainer.accelerator", "cpu", "--data.source", "patches",
            "--data.images.size", 16, "--data.images.num_channels", 3, "--data.batch_size", 2,
            "--data.split.val_size", 2, "--data.stats.num_images", 8, *CHEAP]
    return Kind(work / "converted.ckpt", args, 7)


@pytest.fixture(scope="module")
def diffusers_checkpoint(tmp_path_factory) -> Kind:
    """`convert-diffusers` of a tiny random-weight diffusers NCSN++ folder (3x16x16, no optimizer state, step 0)."""
    from test_convert_diffusers import LAYOUTS, save_flat, unet, write_images

    work = tmp_path_factory.mktemp("diffusers")
    folder = save_flat(unet(*LAYOUTS["skip"]), work / "ncsnpp-tiny")
    write_images(work / "images", 4)
    run("convert-diffusers", folder, work / "converted.ckpt", "--statistics-from", work / "images")
    args = ["--config", work / "converted.yaml", "--data.source", "patches", "--data.batch_size", 2,
            "--data.split.val_size", 2, "--data.stats.num_images", 8, *CHEAP]
    return Kind(work / "converted.ckpt", args, 0, has_writer=True, nfe_per_step=3)  # the scheduler: 2 corrector steps


@pytest.fixture(scope="module")
def safetensors_export(fit_checkpoint, tmp_path_factory) -> Kind:
    """`export` of the fit checkpoint: tensors + JSON, no pickle (weights and statistics, step 0)."""
    out = tmp_path_factory.mktemp("export") / "tiny.safetensors"
    run("export", fit_checkpoint.ckpt, "--output", out)
    return Kind(out, fit_checkpoint.args, 0)


@pytest.fixture(scope="module")
def converted_safetensors(tmp_path_factory) -> Kind:
    """`convert-score-sde --safetensors`: the converted model's tensors + JSON beside its .ckpt (step 0)."""
    work = tmp_path_factory.mktemp("convert_st")
    run("convert-score-sde", SCORE_SDE_CKPT, "--config", SCORE_SDE_CONFIG, "--output", work / "converted.ckpt",
        "--safetensors")
    args = ["--config", SCORE_SDE_CONFIG, "--trainer.accelerator", "cpu", "--data.source", "patches",
            "--data.images.size", 16, "--data.images.num_channels", 3, "--data.batch_size", 2,
            "--data.split.val_size", 2, "--data.stats.num_images", 8, *CHEAP]
    return Kind(work / "converted.safetensors", args, 0)


@pytest.fixture(scope="module")
def old_plain_checkpoint() -> Kind:
    """An older checkpoint of the project saved as the plain {'state_dict', 'hyper_parameters'} (no Lightning keys
    such as 'pytorch-lightning_version'; a flat sampler dict; class-conditional tiny MNIST model, step 0)."""
    args = ["--config", TINY, *CHEAP, "--data.conditional", "true", "--model.net.init_args.num_classes", 10]
    return Kind(OLD_PLAIN_CKPT, args, 0)


KINDS = {"fit": "fit_checkpoint", "convert-score-sde": "converted_checkpoint",
         "convert-diffusers": "diffusers_checkpoint", "export (.safetensors)": "safetensors_export",
         "convert-score-sde --safetensors": "converted_safetensors",
         "older plain checkpoint": "old_plain_checkpoint"}


def saved(path: Path) -> dict:
    """A checkpoint file as the entry points read it (in Lightning's layout, filled in where the file lacks it)."""
    return load_checkpoint_safely(path)


@pytest.fixture(params=KINDS, ids=str)
def kind(request) -> Kind:
    return request.getfixturevalue(KINDS[request.param])


def metric(out: str, name: str) -> float:
    """A metric of Lightning's printed results table."""
    found = re.search(rf"{re.escape(name)}\s+│?\s*(-?[0-9.]+(?:e-?[0-9]+)?|nan|inf)", out)
    assert found, out[-2000:]
    return float(found.group(1))


def test_fit_resumes(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = saved(kind.ckpt)
    run("fit", *kind.args, "--ckpt_path", kind.ckpt, "--trainer.max_steps", kind.step + 2,
        "--trainer.limit_val_batches", 0, "--trainer.default_root_dir", tmp_path,
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.dirpath", tmp_path / "c",
        "--trainer.callbacks.every_n_train_steps", 1)
    (last,) = (tmp_path / "c").glob("*.ckpt")
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == kind.step + 2 and before["global_step"] == kind.step
    state, before = resumed["state_dict"], before["state_dict"]
    assert int(state["ema_num_updates"]) == int(before["ema_num_updates"]) + 2
    assert any(not torch.equal(state[k], v) for k, v in before.items() if k.startswith("ema_net."))


@pytest.mark.parametrize("command, name", [("validate", "val/loss"), ("test", "test/bpd"), ("likelihood", "test/bpd")])
def test_scores(kind, command, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    run(command, *kind.args, "--ckpt_path", kind.ckpt)
    value = metric(capsys.readouterr().out, name)
    assert math.isfinite(value) and value > 0, value


def test_predict_writes_every_seed(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "samples"
    writer = [] if kind.has_writer else ["--trainer.callbacks+=pds_lightning.callbacks.SampleWriter"]
    run("predict", *kind.args, "--ckpt_path", kind.ckpt, *writer, "--trainer.callbacks.output_dir", out)
    assert sorted(p.name for p in out.rglob("*.png")) == [f"{s:06d}.png" for s in range(SEEDS)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_written"] == SEEDS and manifest["nfe_per_sample"] == 2 * kind.nfe_per_step  # 2 PC steps


def test_export_writes_the_same_tensors(kind, tmp_path):
    """`export` takes every kind (a .safetensors export too) and writes its tensors unchanged, loadable again."""
    out = tmp_path / "exported.safetensors"
    run("export", kind.ckpt, "--output", out)
    state, exported = saved(kind.ckpt)["state_dict"], saved(out)["state_dict"]
    assert set(exported) == set(state) and all(torch.equal(exported[k], v) for k, v in state.items())
    assert set(ScoreModule.load_from_checkpoint(out).state_dict()) == set(state)


def test_load_from_checkpoint_holds_the_ema_weights(kind):
    state = saved(kind.ckpt)["state_dict"]
    model = ScoreModule.load_from_checkpoint(kind.ckpt)
    loaded = model.state_dict()
    ema = [k for k in state if k.startswith("ema_net.")]
    assert ema and all(torch.equal(loaded[k], state[k]) for k in ema)
    assert set(loaded) == set(state)
