"""The one-screen reference sampler `pds_pc_sampler` is the general PC sampler, to the bit, and the official one."""

from pathlib import Path

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling import PC, Langevin, RecordedNoise, ReverseDiffusion, pds_pc_sampler
from pds_lightning.sde import VESDE

PARITY = torch.load(Path(__file__).parents[1] / "fixtures" / "pds_sampler_parity.pt", weights_only=True)


def fixture_case(case):
    """(score, sde, preconditioner or None, case) of a recorded official run (see test_parity.py)."""
    c = PARITY[case]
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, num_scales=c["num_scales"])
    score = GaussianScore(0.45, power_law_spectrum(16, 16, variance=0.05), sde)
    masks = c["masks"]
    pre = None if masks == "False" else Preconditioner.from_statistics(
        PARITY["freq_stat"] if masks in ("True", "freq") else None, PARITY["space_stat"] if masks == "True" else None,
        alpha=c["alpha"])
    return score, sde, pre, c


@pytest.mark.parametrize("case", ["pds_b2", "vanilla_b2", "pds_freq_only_b1"])
@pytest.mark.parametrize("step_size", ["sample", "batch"])
@pytest.mark.parametrize("denoise", [True, False])
def test_reference_equals_pc_to_the_bit(case, step_size, denoise):
    score, sde, pre, c = fixture_case(case)
    shape = tuple(c["sample"].shape)
    kwargs = dict(snr=c["snr"], speed_up=c["speed_up"], step_size=step_size, denoise=denoise)
    general_noise, reference_noise = RecordedNoise(c["noise"]), RecordedNoise(c["noise"])
    sampler = PC(speed_up=c["speed_up"], predictor=ReverseDiffusion(), denoise=denoise,
                 corrector=Langevin(snr=c["snr"], steps_per_level=1, step_size=step_size))
    general = sampler(score, sde, shape, noise=general_noise, preconditioner=pre)
    reference = pds_pc_sampler(score, sde, shape, noise=reference_noise, preconditioner=pre, **kwargs)
    assert torch.equal(reference.x, general.x)
    assert reference.nfe == general.nfe == c["nfe"]
    assert reference_noise.calls == general_noise.calls == len(c["noise"])


def test_reference_equals_pc_with_explicit_steps_and_float64():
    score, sde, pre, c = fixture_case("pds_b1")
    z = torch.randn(1 + 2 * 7, *c["sample"].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kwargs = dict(preconditioner=pre, dtype=torch.float64)
    general = PC(steps=7, eps=1e-3)(score, sde, tuple(z.shape[1:]), noise=RecordedNoise(z), **kwargs)
    reference = pds_pc_sampler(score, sde, tuple(z.shape[1:]), noise=RecordedNoise(z), steps=7, eps=1e-3, **kwargs)
    assert reference.x.dtype == torch.float64
    assert torch.equal(reference.x, general.x)


@pytest.mark.parametrize("case", ["pds_b1", "pds_b2", "vanilla_b2", "pds_freq_only_b1"])
def test_reference_reproduces_the_official_samples(case):
    score, sde, pre, c = fixture_case(case)
    noise = RecordedNoise(c["noise"])
    result = pds_pc_sampler(score, sde, tuple(c["sample"].shape), noise=noise, preconditioner=pre, snr=c["snr"],
                            speed_up=c["speed_up"], step_size="batch")
    assert noise.calls == len(c["noise"]) and result.nfe == c["nfe"]
    assert (result.x - c["sample"]).abs().max().item() <= 1e-4
