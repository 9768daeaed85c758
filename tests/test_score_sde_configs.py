"""The released configs (configs/score_sde/) carry score_sde's training settings field by field."""

import inspect
import json
from pathlib import Path

import lightning as L
import pytest
import yaml

from pds_lightning.data import ImageDataModule
from pds_lightning.losses import TRAIN_EPS
from pds_lightning.module import ScoreModule

ROOT = Path(__file__).resolve().parents[1]
# score_sde's training fields per released config, written from its official config files
TABLE = {k: v for k, v in json.loads((ROOT / "tests" / "fixtures" / "score_sde_training.json").read_text()).items()
         if not k.startswith("_")}
SDE_CLASS = {"vesde": "pds_lightning.sde.VESDE", "vpsde": "pds_lightning.sde.VPSDE",
             "subvpsde": "pds_lightning.sde.SubVPSDE"}


def shipped(score_sde_path: str) -> dict:
    name = score_sde_path[len("configs/"):-len(".py")].replace("/", "_")
    return yaml.safe_load((ROOT / "configs" / "score_sde" / f"{name}.yaml").read_text())


def test_every_shipped_config_has_a_row():
    names = {p.stem for p in (ROOT / "configs" / "score_sde").glob("*.yaml")}
    assert names == {p[len("configs/"):-len(".py")].replace("/", "_") for p in TABLE}


@pytest.mark.parametrize("path", sorted(TABLE))
def test_shipped_config_matches_score_sde_training_fields(path):
    ref, cfg = TABLE[path], shipped(path)
    model, data = cfg["model"], cfg["data"]
    assert model["loss"]["class_path"] == "pds_lightning.losses.DSMLoss"
    loss = model["loss"]["init_args"]
    assert model["optimizer"]["class_path"] == "pds_lightning.optim.Adam"
    optim = model["optimizer"]["init_args"]
    pairs = [  # (score_sde field, project value)
        ("training.sde", {v: k for k, v in SDE_CLASS.items()}[model["sde"]["class_path"]]),
        ("training.continuous", model["continuous"]),
        ("training.reduce_mean", loss["reduce_mean"]),
        ("training.likelihood_weighting", loss["likelihood_weighting"]),
        ("training.batch_size", data["batch_size"]),
        ("training.n_iters", cfg["trainer"]["max_steps"] - 1),  # score_sde's loop runs steps 0..n_iters
        ("optim.lr", optim["lr"]),
        ("optim.beta1", optim["betas"][0]),
        ("optim.eps", optim["eps"]),
        ("optim.weight_decay", optim["weight_decay"]),
        ("optim.warmup", optim["warmup"]),
        ("optim.grad_clip", optim["grad_clip"]),
        ("model.ema_rate", model["ema_decay"]),
        ("data.centered", data["images"]["centered"]),
        ("data.random_flip", data["augment"]["random_flip"]),
        ("data.uniform_dequantization", data["augment"]["dequantize"]),
        ("loss_eps", loss["eps"]),
    ]
    assert {field for field, _ in pairs} == set(ref)
    for field, value in pairs:
        assert value == ref[field] and isinstance(value, bool) == isinstance(ref[field], bool), (field, value)
    assert TRAIN_EPS == ref["loss_eps"]  # also DSMLoss's default


@pytest.mark.parametrize("path", sorted(TABLE)[:1])
def test_training_fields_are_arguments_of_the_classes_they_configure(path):
    cfg = shipped(path)
    for section, cls in (("model", ScoreModule), ("data", ImageDataModule), ("trainer", L.Trainer)):
        params = set(inspect.signature(cls.__init__).parameters)
        assert set(cfg[section]) <= params, (section, set(cfg[section]) - params)
