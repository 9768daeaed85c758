"""configs/demo_edm.yaml and patches_edm.yaml: demo.yaml's / patches.yaml's data, network and training steps, with
the network wrapped in EDMPrecond and EDMLoss as the loss; nothing else differs."""

import copy
import inspect
from pathlib import Path

import pytest
import yaml
from torch import nn

from pds_lightning.classpath import instantiate
from pds_lightning.cli import cli_main
from pds_lightning.losses import EDMLoss, Loss
from pds_lightning.models.edm import EDMPrecond
from pds_lightning.module import ScoreModule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load(name):
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", ["demo", "patches"])
def test_edm_config_is_the_base_config_with_the_edm_recipe(name):
    base, edm = load(name), load(f"{name}_edm")
    wrapper, loss = edm["model"].pop("net"), edm["model"].pop("loss")
    assert wrapper["class_path"] == "pds_lightning.models.edm.EDMPrecond"
    inner = copy.deepcopy(wrapper["init_args"]["net"])
    assert inner["init_args"].pop("centered") is True and inner["init_args"].pop("scale_by_sigma") is False
    expected_net = copy.deepcopy(base["model"].pop("net"))
    assert expected_net["init_args"].pop("centered") is False and "scale_by_sigma" not in expected_net["init_args"]
    assert inner == expected_net
    assert loss["class_path"] == "pds_lightning.losses.EDMLoss"
    assert "sigma_data" not in loss["init_args"]  # the loss reads the network's: weight = 1 / c_out^2
    # everything else, the data and the training steps included, is the base config's, in runs/<name>_edm
    as_text = yaml.safe_dump(base).replace(f"runs/{name}", f"runs/{name}_edm").replace(f"name: {name}\n",
                                                                                       f"name: {name}_edm\n")
    assert yaml.safe_load(as_text) == edm
    built = instantiate(wrapper, "model.net", nn.Module)
    base_net = instantiate(load(name)["model"]["net"], "model.net", nn.Module)
    assert isinstance(built, EDMPrecond) and built.sigma_data == 0.25
    assert sum(p.numel() for p in built.parameters()) == sum(p.numel() for p in base_net.parameters())
    assert isinstance(instantiate(loss, "model.loss", Loss), EDMLoss)


def test_the_cli_builds_the_edm_model_and_records_its_nested_spec(tmp_path):
    config = load("demo_edm")
    if "loss" not in inspect.signature(ScoreModule.__init__).parameters:
        config["model"].pop("loss")  # the module's `loss` option lands with the loss components
    config["trainer"].update(default_root_dir=str(tmp_path), logger=False, callbacks=[])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = cli_main(["--config", str(path)], run=False)
    assert isinstance(cli.model.net, EDMPrecond) and cli.model.hparams["net"] == config["model"]["net"]
