"""Stochastic few-step samplers (sampling/stochastic.py) on exact Gaussian scores, where the target law is known.

Exact output law, as in test_solvers.py: on a stationary Gaussian target each sampler is affine in its
standard-normal draws, so feeding unit impulses (row j + 1 gets a delta in draw j, row 0 all zeros) gives the
mean image and the per-mode variances of the output exactly, hence W2 to the target without sampling error.
"""

import math

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore
from pds_lightning.sampling import RecordedNoise
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sampling.solvers import dpmpp_2m
from pds_lightning.sampling.stochastic import (RESTART_INTERVALS, RESTART_REPEATS, dpmpp_2m_sde, dpmpp_2m_sde_nfe,
                                               restart, restart_nfe)
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

# The Gaussian target, its law and the W2 between laws: test_solvers.py's, one target for the sigma-space samplers.
from test_solvers import LAM, MEAN, H, W, target_law, w2

SIGMA_MIN, SIGMA_MAX = 2e-3, 80.0
SDES = {"VE": VESDE(), "VP": VPSDE(), "subVP": SubVPSDE()}
SAMPLERS = {"dpmpp_2m_sde": dpmpp_2m_sde, "restart": restart}


def n_draws(method, n_steps, **kw):
    """Standard-normal draws of one run: the initial one, plus one per SDE step / per restart."""
    if method == "dpmpp_2m_sde":
        return 1 + (n_steps - 1 if kw.get("eta", 1.0) > 0 else 0)
    repeats = kw.get("repeats", RESTART_REPEATS)
    return 1 + (repeats * len(kw.get("intervals", RESTART_INTERVALS)) if isinstance(repeats, int) else sum(repeats))


def nfe(method, n_steps, **kw):
    if method == "dpmpp_2m_sde":
        return dpmpp_2m_sde_nfe(n_steps)
    return restart_nfe(n_steps, **{k: kw[k] for k in ("intervals", "repeats", "inner_steps") if k in kw})


def output_law(method, sde, n_steps, **kw):
    """(mean image A, per-mode variances v over the full fft2 grid) of the sampler's output, exactly."""
    n = n_draws(method, n_steps, **kw)
    stream = [torch.zeros(n + 1, 1, H, W, dtype=torch.float64) for _ in range(n)]
    for j in range(n):
        stream[j][j + 1, 0, 0, 0] = 1.0
    noise = RecordedNoise(stream)
    result = SAMPLERS[method](GaussianScore(MEAN, LAM, sde), sde, (n + 1, 1, H, W), noise=noise, n_steps=n_steps,
                              dtype=torch.float64, **{"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, **kw})
    assert noise.calls == n and result.nfe == nfe(method, n_steps, **kw)
    x = result.x[:, 0]
    return x[0], (torch.fft.fft2(x[1:] - x[0]).abs() ** 2).sum(0)


# ---- hand-computed cases on a 1-pixel Gaussian N(1, 1) (VE, s = 1): D(x; sigma) = 1 + (x - 1) / (1 + sigma^2)
def D(x, sigma):
    return 1 + (x - 1) / (1 + sigma ** 2)


def scalar(sampler, stream, **kw):
    sde = VESDE()
    score = GaussianScore(1.0, torch.ones(1, 1, 1, dtype=torch.float64), sde)
    noise = RecordedNoise([torch.full((1, 1, 1, 1), z, dtype=torch.float64) for z in stream])
    result = sampler(score, sde, (1, 1, 1, 1), noise=noise, dtype=torch.float64, **kw)
    assert noise.calls == len(stream)
    return result.x.item(), result.nfe


def test_dpmpp_2m_sde_by_hand():
    # rho 1: sigmas 3, 2, 1, 0; draws 1 (x = 3), 0.5, -1. eta 1: eta_h = h, w = 1 - (sigma'/sigma)^2.
    # Step 1 (3 -> 2, first order): D(3; 3) = 1.2, w = 5/9, x = (2/3)^2 3 + (5/9) 1.2 + 2 sqrt(5/9) 0.5 = 2 + sqrt(5)/3.
    x1 = 2 + math.sqrt(5) / 3
    # Step 2 (2 -> 1): w = 3/4, r = log 1.5 / log 2; x = (1/2)^2 x1 + w D + 0.5 w (D - 1.2) / r + sqrt(3/4) (-1).
    d = D(x1, 2.0)
    x2 = 0.25 * x1 + 0.75 * d + 0.5 * 0.75 * (d - 1.2) * math.log(2) / math.log(1.5) - math.sqrt(0.75)
    # Step 3 (1 -> 0): x = D(x2; 1). NFE 3.
    x, count = scalar(dpmpp_2m_sde, [1.0, 0.5, -1.0], n_steps=3, sigma_min=1.0, sigma_max=3.0, rho=1.0)
    assert x == pytest.approx(D(x2, 1.0), abs=1e-12) and count == 3
    assert x == pytest.approx(0.9638407898, abs=1e-9)


def test_restart_by_hand():
    # Main levels 2, 1, 0; draws 1 (x = 2), then 0.5 for the one restart. Heun 2 -> 1 gives 1.65 (test_solvers).
    # Restart [1, 1.5], K 1, n 2: x = 1.65 + sqrt(1.5^2 - 1) 0.5, then Heun 1.5 -> 1, then Euler 1 -> 0.
    x = 1.65 + math.sqrt(1.25) * 0.5
    d = (x - D(x, 1.5)) / 1.5
    x_e = x - 0.5 * d
    x = x - 0.5 * (d + (x_e - D(x_e, 1.0))) / 2
    got, count = scalar(restart, [1.0, 0.5], n_steps=2, sigma_min=1.0, sigma_max=2.0, intervals=[(1.0, 1.5)],
                        repeats=1, inner_steps=2)
    assert got == pytest.approx(D(x, 1.0), abs=1e-12) and count == 5 == restart_nfe(2, [(1.0, 1.5)], 1, 2)
    assert got == pytest.approx(1.4766316997, abs=1e-9)


def test_dpmpp_2m_sde_with_eta_0_is_dpmpp_2m():
    sde, score = VESDE(), GaussianScore(MEAN, LAM, VESDE())
    z = torch.randn(3, 1, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kw = dict(n_steps=7, dtype=torch.float64, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    ode = dpmpp_2m(score, sde, z.shape, noise=RecordedNoise([z]), **kw).x
    torch.testing.assert_close(dpmpp_2m_sde(score, sde, z.shape, noise=RecordedNoise([z]), eta=0.0, **kw).x, ode,
                               rtol=1e-12, atol=1e-12)


def test_restart_with_a_longer_backbone_counts_every_evaluation():
    kw = dict(intervals=[(0.06, 0.3), (0.5, 2.0)], repeats=[2, 1], inner_steps=[3, 4])
    # 2 * 10 - 1 main, 2 * 2 * 2 in the first interval, 1 * 2 * 3 in the second
    assert restart_nfe(10, **kw) == 19 + 8 + 6
    output_law("restart", SDES["VE"], 10, **kw)  # asserts result.nfe == restart_nfe and the draws taken
    assert restart_nfe(10, **kw, ode_corrector="langevin", n_corrector_steps=2) == 33 + 18
    assert dpmpp_2m_sde_nfe(10, "langevin", 1) == 19


# ---- towards the target as NFE grows, VE / VP / sub-VP alike ---------------------------------------------------
@pytest.mark.parametrize("method", list(SAMPLERS))
@pytest.mark.parametrize("sde", ["VE", "VP"])
def test_converges_to_the_target_at_second_order(method, sde):
    # sigma_max 1e4: the prior sigma_max z then misses the data mean by a negligible MEAN sqrt(lam_0) / sigma_max.
    # Restart's inner Heun runs refine with the backbone (n = N / 4 levels), else their error would stay.
    def error(n):
        kw = dict(sigma_max=1e4, **({"inner_steps": n // 4} if method == "restart" else {}))
        return w2(output_law(method, SDES[sde], n, **kw), target_law())

    errors = [error(n) for n in (64, 128, 256)]
    gains = [a / b for a, b in zip(errors, errors[1:])]
    assert min(gains) > 3.5 and errors[-1] < 1e-3, (errors, gains)


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_ve_vp_subvp_give_the_same_samples(method):
    """Same noise levels, same draws: the sigma-space samplers do not depend on how the SDE scales x."""
    laws = [output_law(method, SDES[name], 6) for name in SDES]
    for other in laws[1:]:
        torch.testing.assert_close(other[0], laws[0][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(other[1], laws[0][1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", list(SAMPLERS))
def test_a_sample_depends_only_on_its_seed(method):
    sde = VPSDE()
    score = GaussianScore(MEAN, LAM.float(), sde)
    run = lambda seeds: SAMPLERS[method](score, sde, (len(seeds), 1, H, W), noise=SeededNoise(seeds), n_steps=6,
                                         sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX).x
    together, alone = run([3, 7, 11]), run([11])
    torch.testing.assert_close(together[2:], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


# ---- bad settings ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(eta=-0.5), "eta >= 0 and S_noise >= 0"),
    (dict(S_noise=float("nan")), "eta >= 0 and S_noise >= 0"),
])
def test_dpmpp_2m_sde_refuses(kw, message):
    with pytest.raises(ValueError, match=message):
        scalar(dpmpp_2m_sde, [1.0], n_steps=3, **kw)


@pytest.mark.parametrize("kw, message", [
    (dict(intervals=[]), "non-empty list of \\[t_min, t_max\\] pairs"),
    (dict(intervals=[(0.1, 0.2, 0.3)]), "non-empty list of \\[t_min, t_max\\] pairs"),
    (dict(intervals=[(0.3, 0.06)]), "need t_min .* < t_max"),
    (dict(intervals=[(0.06, 500.0)]), "t_max <= sigma_max"),
    (dict(intervals=[(1e-6, 0.3)]), "t_min must lie between"),
    (dict(intervals=[(90.0, 95.0)]), "t_min must lie between"),
    (dict(repeats=0), "repeats must be >= 1"),
    (dict(inner_steps=1), "inner_steps must be >= 2"),
    (dict(repeats=[1, 2]), "repeats wants an int or one int per interval \\(1\\)"),
    (dict(inner_steps=2.5), "inner_steps wants an int"),
    (dict(intervals=[(0.06, 0.3), (0.061, 0.5)]), "as another interval does"),
])
def test_restart_refuses(kw, message):
    with pytest.raises(ValueError, match=message):
        restart(GaussianScore(MEAN, LAM, VESDE()), VESDE(), (1, 1, H, W),
                noise=RecordedNoise([torch.zeros(1, 1, H, W)]), n_steps=8, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, **kw)
