"""Bits/dim through the probability-flow ODE against the exact log-density of a Gaussian image model.

GaussianScore's marginals are Gaussian with eigenvalues a_t^2 lam + s_t^2 in Fourier, so log p_eps(x) is
known in closed form (`GaussianScore.log_prob`). The exact trace separates solver error (tight) from the
Hutchinson estimator's noise (within its standard error over independent probes).
"""

import math

import pytest
import torch

from pds_lightning.likelihood import (LikelihoodSettings, bits_offset, bits_per_dim, bits_per_dim_of_batch, dequantize,
                                      log_likelihood, probe)
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sde import VESDE, VPSDE, SubVPSDE

H = 4
SDES = {"ve": lambda: VESDE(0.01, 50.0), "vp": lambda: VPSDE(0.1, 20.0), "subvp": lambda: SubVPSDE(0.1, 20.0)}
EPS = 1e-5


def gaussian(name):
    sde = SDES[name]()
    lam = power_law_spectrum(H, H, variance=0.05, channels=1).double()
    return sde, GaussianScore(0.5, lam, sde)


def exact_end(target, sde):
    """The density the ODE really ends at (p_T of the Gaussian), so only the solver / estimator err."""
    return lambda z: target.log_prob(z, sde.T)


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_exact_trace_matches_the_closed_form(name, solver):
    sde, target = gaussian(name)
    x = target.sample(3, torch.Generator().manual_seed(0))
    settings = LikelihoodSettings(estimator="exact", solver=solver, n_steps=40, eps=EPS)
    logp, calls = log_likelihood(target, sde, x, settings, prior_logp=exact_end(target, sde))
    exact = target.log_prob(x, EPS)
    assert torch.allclose(logp, exact, atol=2e-3, rtol=0), (logp - exact).tolist()
    if solver == "rk4":
        assert calls == 4 * 40


@pytest.mark.parametrize("name", sorted(SDES))
def test_heun_converges_to_the_closed_form(name):
    sde, target = gaussian(name)
    x = target.sample(2, torch.Generator().manual_seed(1))
    exact = target.log_prob(x, EPS)
    errors = []
    for n in (25, 100):
        settings = LikelihoodSettings(estimator="exact", solver="heun", n_steps=n, eps=EPS)
        logp, _ = log_likelihood(target, sde, x, settings, prior_logp=exact_end(target, sde))
        errors.append((logp - exact).abs().max().item())
    assert errors[1] < errors[0] / 8, errors  # second order: 4x the steps, ~16x less error


@pytest.mark.parametrize("name", sorted(SDES))
@pytest.mark.parametrize("estimator", ["rademacher", "gaussian"])
def test_hutchinson_within_its_standard_error(name, estimator):
    sde, target = gaussian(name)
    x = target.sample(1, torch.Generator().manual_seed(2)).expand(64, -1, -1, -1)  # 64 independent probes
    settings = LikelihoodSettings(estimator=estimator, solver="rk4", n_steps=40, eps=EPS)
    logp, _ = log_likelihood(target, sde, x, settings, torch.Generator().manual_seed(3),
                             prior_logp=exact_end(target, sde))
    exact = target.log_prob(x[:1], EPS)[0]
    se = logp.std() / math.sqrt(len(logp))
    assert logp.std() > 0.05  # the probes do vary
    assert abs(logp.mean() - exact) < 4 * se + 2e-3, (logp.mean().item(), exact.item(), se.item())


@pytest.mark.parametrize("name", sorted(SDES))
def test_the_sde_prior_is_close_to_p_T_here(name):
    """score_sde ends at the SDE's prior, not p_T; for these SDEs the difference is small (< 0.1 nat)."""
    sde, target = gaussian(name)
    x = target.sample(2, torch.Generator().manual_seed(4))
    settings = LikelihoodSettings(estimator="exact", solver="rk4", n_steps=40, eps=EPS)
    logp, _ = log_likelihood(target, sde, x, settings)
    assert torch.allclose(logp, target.log_prob(x, EPS), atol=0.1, rtol=0)


def test_bits_per_dim_offset_and_dequantization():
    sde, target = gaussian("ve")
    images = torch.rand(2, 1, H, H, generator=torch.Generator().manual_seed(5)).mul(255).round().div(255)
    settings = LikelihoodSettings(estimator="exact", n_steps=20, eps=EPS, dequantize=False)
    bpd, _ = bits_per_dim(target, sde, images, centered=False, settings=settings)
    logp, _ = log_likelihood(target, sde, images, settings)
    assert torch.allclose(bpd, -logp / (H * H * math.log(2)) + 8.0)
    assert bits_offset(False) == 8.0 and bits_offset(True) == 7.0
    u = dequantize(images, torch.Generator().manual_seed(0))
    assert ((u - images * 255 / 256) >= 0).all() and ((u - images * 255 / 256) < 1 / 256).all()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        bits_per_dim(target, sde, images * 2, centered=False, settings=settings)


def test_a_batch_is_scored_from_its_own_seed_rank_and_index():
    """The test / validation steps' bits/dim: model-space images back to [0, 1], then bits_per_dim with a
    generator seeded by (seed, rank, batch_idx) only, so a rank's batch gets the same draws in any run."""
    sde, target = gaussian("ve")
    images = torch.rand(2, 1, H, H, generator=torch.Generator().manual_seed(5)).mul(255).round().div(255)
    settings = LikelihoodSettings(n_steps=8, eps=EPS, seed=3)
    got = bits_per_dim_of_batch(target, sde, images, False, settings, rank=1, batch_idx=2)
    seed = (3 * 1_000_003 + 1) * 1_000_003 + 2
    want, _ = bits_per_dim(target, sde, images, False, settings, torch.Generator().manual_seed(seed))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    centered = bits_per_dim_of_batch(target, sde, images * 2 - 1, True, settings, rank=1, batch_idx=2)
    torch.testing.assert_close(centered, bits_per_dim(target, sde, images, True, settings,
                                                      torch.Generator().manual_seed(seed))[0], rtol=0, atol=0)
    other_rank = bits_per_dim_of_batch(target, sde, images, False, settings, rank=0, batch_idx=2)
    assert not torch.equal(other_rank, got)


def test_probes_have_identity_second_moment():
    g = torch.Generator().manual_seed(0)
    v = probe((20000, 3), "rademacher", g, "cpu", torch.float64)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert torch.allclose(v.T @ v / len(v), torch.eye(3, dtype=torch.float64), atol=0.03)
    assert probe((2, 3), "exact", g, "cpu", torch.float64) is None


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="estimator"):
        LikelihoodSettings(estimator="hutch")
    with pytest.raises(ValueError, match="solver"):
        LikelihoodSettings(solver="rk45")
