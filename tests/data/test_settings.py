"""`ImageDataModule`'s arguments grouped by concern (issue 32): `data.images`, `augment`, `split`, `stats`, `predict`,
and the flat keys of older versions, which still load (in Python calls, config files and options) with one warning
naming the new keys, a contradiction with the new key refused in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from pds_lightning.cli import cli_main, main
from pds_lightning.data import Augment, ImageDataModule, Images, Predict, Split, Stats
from pds_lightning.data.tasks import Inpaint

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
OLD_CKPT = ROOT / "tests" / "fixtures" / "tiny_flat_sampler.ckpt"
# tests/configs/tiny.yaml's data section as the versions before the groups wrote it.
OLD_DATA = {"source": "mnist", "image_size": 16, "num_channels": 1, "allow_upscale": False, "random_flip": False,
            "batch_size": 8, "val_size": 8, "stats_num_images": 32, "seeds": "0-5", "predict_batch_size": 4}
OLD_WARNING = ("old flat data keys in {where}: data.image_size -> data.images.size, data.num_channels -> "
               "data.images.num_channels, data.allow_upscale -> data.images.allow_upscale, data.random_flip -> "
               "data.augment.random_flip, data.val_size -> data.split.val_size, data.stats_num_images -> "
               "data.stats.num_images, data.seeds -> data.predict.seeds, data.predict_batch_size -> "
               "data.predict.batch_size; write the grouped keys (the old ones will be removed)")
GROUPS = ("images", "augment", "split", "stats", "predict")


def settings(dm: ImageDataModule) -> dict:
    """What a data module was configured with: its groups and its top-level arguments."""
    return {"groups": [getattr(dm, name) for name in GROUPS],
            "top": (dm.source, dm.root, dm.download, dm.conditional, dm.batch_size, dm.num_workers, dm.shuffle_seed)}


def old_config(tmp_path: Path, data: dict) -> Path:
    config = yaml.safe_load(TINY.read_text())
    config["data"] = data
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    """`pds-lightning ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as err:  # --print_config and errors exit; a run returns
        code = err.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


# -- Python ---------------------------------------------------------------------------------------------------------
def test_the_groups_hold_the_defaults_and_the_hyper_parameters_are_plain_data(tmp_path):
    dm = ImageDataModule(predict=Predict(task=Inpaint("mnist", indices="0-1")))
    assert (dm.images, dm.augment, dm.split, dm.stats) == (Images(), Augment(), Split(), Stats())
    assert (dm.images.size, dm.augment.random_flip, dm.split.val_size, dm.stats.num_images, dm.predict.seeds,
            dm.predict.batch_size) == (32, True, 256, 200, "0-63", 16)
    assert dm.hparams["predict"]["task"] == {"class_path": "pds_lightning.data.tasks.Inpaint",
                                             "init_args": {"source": "mnist", "masks": None, "mask": "center",
                                                           "indices": "0-1"}}
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, tmp_path / "h.pt")
    saved = torch.load(tmp_path / "h.pt", weights_only=True)["datamodule_hyper_parameters"]
    assert saved == dict(dm.hparams) and sorted(saved) == sorted(
        ["source", "root", "download", "conditional", "batch_size", "num_workers", "shuffle_seed", *GROUPS])
    # The plain form builds the same module again (a group as a mapping of its fields).
    again = ImageDataModule(**{k: v for k, v in saved.items() if k != "predict"})
    assert settings(again)["groups"][:4] == settings(dm)["groups"][:4]


def test_old_keywords_give_the_grouped_module_with_one_warning():
    grouped = ImageDataModule(images=Images(size=16, num_channels=1, allow_upscale=False),
                              augment=Augment(random_flip=False), batch_size=8, split=Split(val_size=8),
                              stats=Stats(num_images=32), predict=Predict(seeds="0-5", batch_size=4))
    with pytest.warns(UserWarning) as record:
        old = ImageDataModule(**OLD_DATA)
    assert [str(w.message) for w in record] == [OLD_WARNING.format(where="ImageDataModule(...)")]
    assert settings(old) == settings(grouped) and dict(old.hparams) == dict(grouped.hparams)
    # An old key beside its group, agreeing or not.
    assert ImageDataModule(split_seed=3, split=Split(val_size=4)).split == Split(val_size=4, seed=3)
    with pytest.raises(ValueError, match=r"^data\.seeds='0-3' contradicts data\.predict\.seeds='0-5' in "
                                         r"ImageDataModule\(\.\.\.\); remove data\.seeds \(the old key\) and keep "
                                         r"data\.predict\.seeds$"):
        ImageDataModule(seeds="0-3", predict=Predict(seeds="0-5"))
    with pytest.raises(TypeError, match="^ImageDataModule got unexpected keyword argument.s. image_sise$"):
        ImageDataModule(image_sise=16)


def test_an_old_checkpoints_flat_data_hyper_parameters_build_the_same_module():
    """tiny_flat_sampler.ckpt holds the flat datamodule_hyper_parameters of before the groups."""
    hparams = torch.load(OLD_CKPT, weights_only=True, map_location="cpu")["datamodule_hyper_parameters"]
    with pytest.warns(UserWarning, match="^old flat data keys in ImageDataModule"):
        old = ImageDataModule(**{k: v for k, v in hparams.items() if not k.startswith("_")})
    assert (old.images, old.augment, old.split, old.stats, old.predict) == (
        Images(size=16, num_channels=1), Augment(random_flip=False), Split(val_size=8), Stats(num_images=32),
        Predict(seeds="0-5", batch_size=4))


@pytest.mark.parametrize("make, message", [
    (lambda: Images(size=0), "data.images.size must be positive, got 0"),
    (lambda: Images(num_channels=2), "data.images.num_channels must be 1 or 3 (or None for the source's own), got 2"),
    (lambda: Split(test_size=-1), "data.split.test_size must be non-negative, got -1"),
    (lambda: Stats(num_images=-2), "data.stats.num_images must be non-negative, got -2"),
    (lambda: Predict(batch_size=0), "data.predict.batch_size must be positive, got 0"),
    (lambda: ImageDataModule(batch_size=0), "data.batch_size must be positive, got 0"),
])
def test_each_group_checks_its_fields_naming_the_grouped_key(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


# -- the command line -----------------------------------------------------------------------------------------------
def test_an_old_config_gives_the_module_of_the_grouped_one_with_one_warning(tmp_path):
    path = old_config(tmp_path, OLD_DATA)
    with pytest.warns(UserWarning) as record:
        old = cli_main(["--config", str(path), "--trainer.logger", "false"], run=False)
    assert [str(w.message) for w in record if "old flat data keys" in str(w.message)] == \
        [OLD_WARNING.format(where=path.name)]
    new = cli_main(["--config", str(TINY), "--trainer.logger", "false"], run=False)
    assert settings(old.datamodule) == settings(new.datamodule)
    assert old.model.image_shape == new.model.image_shape == (1, 16, 16)  # linked from data.images


def test_old_options_work_and_print_config_shows_the_grouped_keys(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"^old flat data keys in the command line: data\.seeds -> "
                                         r"data\.predict\.seeds, data\.stats_seed -> data\.stats\.seed; write"):
        code, out, _ = run(capsys, "fit", "--config", TINY, "--data.seeds", "0-9", "--data.stats_seed=7",
                           "--print_config")
    data = yaml.safe_load(out)["data"]
    assert code == 0 and data["predict"] == {"seeds": "0-9", "batch_size": 4, "classes": None, "task": None}
    assert data["stats"] == {"num_images": 32, "seed": 7, "cache_dir": None}
    assert not set(data) & {"seeds", "stats_seed", "image_size"}
    assert data["images"] == dataclasses.asdict(Images(size=16, num_channels=1))


@pytest.mark.parametrize("source", ["config", "options"])
def test_an_old_key_contradicting_its_new_key_is_refused_in_one_line(tmp_path, capsys, monkeypatch, source):
    monkeypatch.chdir(tmp_path)
    if source == "config":
        path = old_config(tmp_path, {**yaml.safe_load(TINY.read_text())["data"], "seeds": "0-9"})
        args, where = ["--config", path], path.name
    else:
        args, where = ["--config", TINY, "--data.seeds", "0-9", "--data.predict.seeds", "0-3"], "the command line"
    code, _, err = run(capsys, "fit", *args, "--print_config")
    there = "0-5" if source == "config" else "0-3"
    assert code == 1 and err.splitlines()[-1] == (
        f"pds-lightning: error: data.seeds='0-9' contradicts data.predict.seeds='{there}' in {where}; remove "
        "data.seeds (the old key) and keep data.predict.seeds (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)")


def test_an_old_checkpoint_predicts_with_the_grouped_config(tmp_path, capsys, monkeypatch):
    """The checkpoint's flat datamodule_hyper_parameters are not read: the config is what runs."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "predict", "--config", TINY, "--ckpt_path", OLD_CKPT, "--data.predict.seeds", "0-1",
                       "--model.sampler.steps", "2", "--trainer.logger", "false",
                       "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter",
                       "--trainer.callbacks.output_dir", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out" / "000").iterdir()) == ["000000.png", "000001.png"]
