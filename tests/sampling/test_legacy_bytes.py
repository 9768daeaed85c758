"""Old checkpoints (flat sampler dict in the hyper-parameters) load and sample the bytes recorded before the
sampler components (tests/fixtures/sampler_bytes.pt, made by tests/scripts/make_sampler_fixture.py on 70c7b4a):
every shipped config's sampler settings, translated once by pds_lightning.legacy, and the same settings
written as components."""

from pathlib import Path

import pytest
import torch

from pds_lightning.images import to_uint8
from pds_lightning.legacy import sampler_from_flat
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC, PDS, Sampler

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RECORD = torch.load(FIXTURES / "sampler_bytes.pt", weights_only=True)
SAMPLES = RECORD["samples"]


@pytest.fixture(scope="module")
def models():
    return {"plain": ScoreModule.load_from_checkpoint(FIXTURES / RECORD["checkpoint"]),
            "conditional": ScoreModule.load_from_checkpoint(FIXTURES / RECORD["conditional_checkpoint"])}


def test_old_checkpoint_loads_its_flat_sampler_as_a_component(models):
    model = models["plain"]
    assert isinstance(model.sampler, PC)
    assert model.sampler.name == "pds_10" and model.sampler.pc_steps == 10
    assert model.sampler.pds == PDS(filters="both", alpha=5.0)
    assert model.hparams["sampler"]["class_path"] == "pds_lightning.sampling.pc.PC"  # plain data now


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_same_bytes_through_generate_images(models, key):
    entry = SAMPLES[key]
    model = models["conditional" if entry["classes"] is not None else "plain"]
    sampler = sampler_from_flat(entry["settings"])
    assert isinstance(sampler, Sampler)
    images = model.generate_images(RECORD["seeds"], sampler=sampler, classes=entry["classes"])
    assert torch.equal(images, entry["images"]), key
    assert torch.equal(torch.from_numpy(to_uint8(images)), entry["uint8"]), key
    if "auto" not in key:
        assert sampler.nfe(model.sde) == entry["nfe"], key  # the exact count, before sampling


def test_component_config_round_trips_to_the_same_bytes(models):
    """The component's own {'class_path', 'init_args'} (what new checkpoints store) samples the same bytes."""
    entry = SAMPLES["configs/score_sde/ve_celebahq_256_ncsnpp_continuous.yaml:model.sampler"]
    config = sampler_from_flat(entry["settings"]).config()
    assert config["init_args"]["corrector"]["init_args"] == {"snr": 0.17, "steps_per_level": 1, "step_size": "sample"}
    images = models["plain"].generate_images(RECORD["seeds"], sampler=config)
    assert torch.equal(images, entry["images"])
