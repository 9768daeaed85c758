"""Parity with the official PDS sampler, replaying its recorded noise (tests/fixtures/pds_sampler_parity.pt)."""

from pathlib import Path

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling import PC, Langevin, RecordedNoise
from pds_lightning.sde import VESDE

PARITY = torch.load(Path(__file__).parents[1] / "fixtures" / "pds_sampler_parity.pt", weights_only=True)


@pytest.mark.parametrize("case", ["pds_b1", "pds_b2", "vanilla_b2", "pds_freq_only_b1"])
def test_official_samples_reproduced(case):
    c = PARITY[case]
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, num_scales=c["num_scales"])
    # The fixture's analytic score: mean 0.45, lam = 1 / (f^2 + (1/16)^2) scaled to mean 0.05.
    score = GaussianScore(0.45, power_law_spectrum(16, 16, variance=0.05), sde)
    masks = c["masks"]
    pre = Preconditioner.from_statistics(PARITY["freq_stat"] if masks in ("True", "freq") else None,
                                         PARITY["space_stat"] if masks == "True" else None, alpha=c["alpha"])
    assert pre.is_identity == (masks == "False")
    noise = RecordedNoise(c["noise"])
    sampler = PC(speed_up=c["speed_up"], corrector=Langevin(snr=c["snr"], steps_per_level=1, step_size="batch"))
    result = sampler(score, sde, tuple(c["sample"].shape), noise=noise, preconditioner=pre)
    assert noise.calls == len(c["noise"])  # every recorded draw used, in order
    assert result.nfe == c["nfe"]
    assert (result.x - c["sample"]).abs().max().item() <= 1e-4


def test_per_sample_step_size_differs_from_batch_rule_only_in_batches():
    c = PARITY["pds_b2"]
    sde = VESDE(num_scales=c["num_scales"])
    score = GaussianScore(0.45, power_law_spectrum(16, 16), sde)
    pre = Preconditioner.from_statistics(PARITY["freq_stat"], PARITY["space_stat"], alpha=c["alpha"])
    run = lambda mode, noise: PC(speed_up=c["speed_up"], corrector=Langevin(step_size=mode))(
        score, sde, tuple(noise.shape[1:]), noise=RecordedNoise(noise), preconditioner=pre).x
    # Batch of 2: the official batch-mean rule couples the samples; per-sample norms do not.
    assert (run("sample", c["noise"]) - c["sample"]).abs().max() > 1e-3
    # Batch of 1: both rules are the same.
    b1 = PARITY["pds_b1"]
    pre = Preconditioner.from_statistics(PARITY["freq_stat"], PARITY["space_stat"], alpha=b1["alpha"])
    torch.testing.assert_close(run("sample", b1["noise"]), run("batch", b1["noise"]))
