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
# One test per distinct setting: configs that share a setting (demo / patches, the VE CIFAR-10 pair, ...) share
# its recorded images (the name does not change the samples); the first key in sorted order stands for them.
DISTINCT = {}
for _key in sorted(SAMPLES):
    DISTINCT.setdefault(repr(sorted((k, v) for k, v in SAMPLES[_key]["settings"].items() if k != "name")), _key)


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


@pytest.mark.parametrize("key", sorted(DISTINCT.values()))
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


@pytest.mark.parametrize("key,flags", [
    ("configs/score_sde/ve_cifar10_ncsnpp_continuous.yaml:model.sampler",
     ["--model.sampler.pc_steps", "null", "--model.sampler.speed_up", "10"]),
])
def test_predict_writes_the_recorded_png_bytes_from_the_old_checkpoint(key, flags, tmp_path):
    """`pds-lightning predict` on the old checkpoint with the shipped setting (tiny.yaml's PC with PDS both,
    alpha 5, at speed_up 10: ve_cifar10's sampler) writes PNGs whose bytes are those of the recorded pixels."""
    import subprocess
    import sys

    from helpers import clean_env
    from pds_lightning.images import encode_png
    from pds_lightning.writer import sample_path

    root = FIXTURES.parents[1]
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pds_lightning.cli", "predict", "--config", root / "tests/configs/tiny.yaml",
         "--ckpt_path", FIXTURES / RECORD["checkpoint"], "--trainer.logger", "false", "--data.seeds", "0-2",
         "--data.predict_batch_size", "3", "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter",
         "--trainer.callbacks.output_dir", out, *flags],
        cwd=tmp_path, env=clean_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = SAMPLES[key]["uint8"].numpy()
    for i, seed in enumerate(RECORD["seeds"]):
        assert sample_path(out, seed).read_bytes() == encode_png(expected[i]), seed
