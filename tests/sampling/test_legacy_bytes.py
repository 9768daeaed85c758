"""Old checkpoints (flat sampler dict in the hyper-parameters) load and sample the bytes recorded before the
sampler components (tests/fixtures/sampler_bytes.pt, made by tests/scripts/make_sampler_fixture.py on 70c7b4a):
every shipped config's sampler settings, translated once by pds_lightning.legacy, and the same settings
written as components.

The record was made on one CPU; another (here one with AVX-512, whose torch / oneDNN kernels differ) rounds float32
differently in the last bits: up to 7e-5 on images in [0, 1] on 2026-12-06's machine, where the uint8 pixels
were still all equal. So the floats compare to ROUNDING and the 8-bit pixels to one grey level; any change of
a stochastic sampler's maths (a step count, snr, alpha, a noise draw) flips whole pixels of these saturated
tiny-model samples and fails. The deterministic solvers' images move less (edm_heun with 7 steps for 6: 1e-5);
their maths is held to exact Gaussian targets in test_solvers.py.
"""

import io
from pathlib import Path

import numpy as np
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
#: Largest float difference accepted from the recorded images: cross-CPU rounding, 3x the largest seen.
ROUNDING = 2e-4
for _key in sorted(SAMPLES):
    DISTINCT.setdefault(repr(sorted((k, v) for k, v in SAMPLES[_key]["settings"].items() if k != "name")), _key)


def assert_recorded_pixels(pixels: np.ndarray, entry: dict, key) -> None:
    """8-bit `pixels` are the recorded ones up to cross-CPU rounding: one grey level."""
    assert np.abs(pixels.astype(int) - entry["uint8"].numpy().astype(int)).max() <= 1, key


def assert_recorded(images: torch.Tensor, entry: dict, key: str) -> None:
    """`images` are the recorded ones up to cross-CPU rounding, and so are their 8-bit pixels."""
    torch.testing.assert_close(images, entry["images"], rtol=0, atol=ROUNDING, msg=key)
    assert_recorded_pixels(to_uint8(images), entry, key)


@pytest.fixture(scope="module")
def models():
    return {"plain": ScoreModule.load_from_checkpoint(FIXTURES / RECORD["checkpoint"]),
            "conditional": ScoreModule.load_from_checkpoint(FIXTURES / RECORD["conditional_checkpoint"])}


def test_old_checkpoint_loads_its_flat_sampler_as_a_component(models):
    model = models["plain"]
    assert isinstance(model.sampler, PC)
    assert model.sampler.name == "pds_10" and model.sampler.steps == 10
    assert model.sampler.pds == PDS(filters="both", alpha=5.0)
    assert model.hparams["sampler"]["class_path"] == "pds_lightning.sampling.pc.PC"  # plain data now


@pytest.mark.parametrize("key", sorted(DISTINCT.values()))
def test_recorded_samples_through_generate_images(models, key):
    entry = SAMPLES[key]
    model = models["conditional" if entry["classes"] is not None else "plain"]
    sampler = sampler_from_flat(entry["settings"])
    assert isinstance(sampler, Sampler)
    images = model.generate_images(RECORD["seeds"], sampler=sampler, classes=entry["classes"])
    assert_recorded(images, entry, key)
    if "auto" not in key:
        assert sampler.nfe(model.sde) == entry["nfe"], key  # the exact count, before sampling


def test_component_config_round_trips_to_the_recorded_samples(models):
    """The component's own {'class_path', 'init_args'} (what new checkpoints store) samples the recorded images."""
    entry = SAMPLES["configs/score_sde/ve_celebahq_256_ncsnpp_continuous.yaml:model.sampler"]
    config = sampler_from_flat(entry["settings"]).config()
    assert config["init_args"]["corrector"]["init_args"] == {"snr": 0.17, "steps_per_level": 1, "step_size": "sample"}
    images = models["plain"].generate_images(RECORD["seeds"], sampler=config)
    assert_recorded(images, entry, "component config")


@pytest.mark.parametrize("key,flags", [
    ("configs/score_sde/ve_cifar10_ncsnpp_continuous.yaml:model.sampler",
     ["--model.sampler.steps", "null", "--model.sampler.speed_up", "10"]),
])
def test_predict_writes_the_recorded_pixels_from_the_old_checkpoint(key, flags, tmp_path):
    """`pds-lightning predict` on the old checkpoint with the shipped setting (tiny.yaml's PC with PDS both,
    alpha 5, at speed_up 10: ve_cifar10's sampler) writes PNGs of the recorded pixels."""
    import subprocess
    import sys

    from helpers import clean_env
    from PIL import Image
    from pds_lightning.writer import sample_path

    root = FIXTURES.parents[1]
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "pds_lightning.cli", "predict", "--config", root / "tests/configs/tiny.yaml",
         "--ckpt_path", FIXTURES / RECORD["checkpoint"], "--trainer.logger", "false", "--data.predict.seeds", "0-2",
         "--data.predict.batch_size", "3", "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter",
         "--trainer.callbacks.output_dir", out, *flags],
        cwd=tmp_path, env=clean_env(OMP_NUM_THREADS=1), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = np.stack([np.asarray(Image.open(io.BytesIO(sample_path(out, seed).read_bytes())))
                        for seed in RECORD["seeds"]]).reshape(SAMPLES[key]["uint8"].shape)
    assert_recorded_pixels(written, SAMPLES[key], key)
