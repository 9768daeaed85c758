"""Stochastic few-step samplers (DPMSolverPP2MSDE, Restart) on exact Gaussian scores, where the target law is known.

Exact output law, as in test_solvers.py: on a stationary Gaussian target each sampler is affine in its
standard-normal draws, so feeding unit impulses (row j + 1 gets a delta in draw j, row 0 all zeros) gives the
mean image and the per-mode variances of the output exactly, hence W2 to the target without sampling error.
"""

import math

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore
from pds_lightning.sampling import DPMSolverPP2M, DPMSolverPP2MSDE, Karras, Langevin, RecordedNoise, Restart
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

# The Gaussian target, its law and the W2 between laws: test_solvers.py's, one target for the sigma-space samplers.
from test_solvers import LAM, MEAN, H, W, target_law, w2

SIGMA_MIN, SIGMA_MAX = 2e-3, 80.0
SDES = {"VE": VESDE(), "VP": VPSDE(), "subVP": SubVPSDE()}
SAMPLERS = [DPMSolverPP2MSDE, Restart]


def make(cls, steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0, **kw):
    return cls(steps=steps, schedule=Karras(rho, sigma_min, sigma_max), **kw)


def n_draws(sampler):
    """Standard-normal draws of one run: the initial one, plus one per SDE step / per restart."""
    if isinstance(sampler, DPMSolverPP2MSDE):
        return 1 + (sampler.steps - 1 if sampler.eta > 0 else 0)
    return 1 + sum(k for _, k, _ in sampler.per_interval())


def output_law(cls, sde, steps, **kw):
    """(mean image A, per-mode variances v over the full fft2 grid) of the sampler's output, exactly."""
    sampler = make(cls, steps, **kw)
    n = n_draws(sampler)
    stream = [torch.zeros(n + 1, 1, H, W, dtype=torch.float64) for _ in range(n)]
    for j in range(n):
        stream[j][j + 1, 0, 0, 0] = 1.0
    noise = RecordedNoise(stream)
    result = sampler(GaussianScore(MEAN, LAM, sde), sde, (n + 1, 1, H, W), noise=noise, dtype=torch.float64)
    assert noise.calls == n and result.nfe == sampler.nfe(sde)
    x = result.x[:, 0]
    return x[0], (torch.fft.fft2(x[1:] - x[0]).abs() ** 2).sum(0)


# ---- hand-computed cases on a 1-pixel Gaussian N(1, 1) (VE, s = 1): D(x; sigma) = 1 + (x - 1) / (1 + sigma^2)
def D(x, sigma):
    return 1 + (x - 1) / (1 + sigma ** 2)


def scalar(cls, stream, steps, **kw):
    sde = VESDE()
    score = GaussianScore(1.0, torch.ones(1, 1, 1, dtype=torch.float64), sde)
    noise = RecordedNoise([torch.full((1, 1, 1, 1), z, dtype=torch.float64) for z in stream])
    result = make(cls, steps, **kw)(score, sde, (1, 1, 1, 1), noise=noise, dtype=torch.float64)
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
    x, count = scalar(DPMSolverPP2MSDE, [1.0, 0.5, -1.0], steps=3, sigma_min=1.0, sigma_max=3.0, rho=1.0)
    assert x == pytest.approx(D(x2, 1.0), abs=1e-12) and count == 3
    assert x == pytest.approx(0.9638407898, abs=1e-9)


def test_restart_by_hand():
    # Main levels 2, 1, 0; draws 1 (x = 2), then 0.5 for the one restart. Heun 2 -> 1 gives 1.65 (test_solvers).
    # Restart [1, 1.5], K 1, n 2: x = 1.65 + sqrt(1.5^2 - 1) 0.5, then Heun 1.5 -> 1, then Euler 1 -> 0.
    x = 1.65 + math.sqrt(1.25) * 0.5
    d = (x - D(x, 1.5)) / 1.5
    x_e = x - 0.5 * d
    x = x - 0.5 * (d + (x_e - D(x_e, 1.0))) / 2
    got, count = scalar(Restart, [1.0, 0.5], steps=2, sigma_min=1.0, sigma_max=2.0, intervals=[(1.0, 1.5)],
                        repeats=1, inner_steps=2)
    assert got == pytest.approx(D(x, 1.0), abs=1e-12) and count == 5
    assert got == pytest.approx(1.4766316997, abs=1e-9)


def test_dpmpp_2m_sde_with_eta_0_is_dpmpp_2m():
    """One update function: the deterministic sampler is the SDE one at eta 0, to the bit, with no draws."""
    sde, score = VESDE(), GaussianScore(MEAN, LAM, VESDE())
    z = torch.randn(3, 1, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ode = make(DPMSolverPP2M, 7)(score, sde, z.shape, noise=RecordedNoise([z]), dtype=torch.float64).x
    noise = RecordedNoise([z])
    sde_eta_0 = make(DPMSolverPP2MSDE, 7, eta=0.0)(score, sde, z.shape, noise=noise, dtype=torch.float64).x
    assert torch.equal(sde_eta_0, ode) and noise.calls == 1


def test_restart_with_a_longer_backbone_counts_every_evaluation():
    kw = dict(intervals=[(0.06, 0.3), (0.5, 2.0)], repeats=[2, 1], inner_steps=[3, 4])
    # 2 * 10 - 1 main, 2 * 2 * 2 in the first interval, 1 * 2 * 3 in the second
    assert make(Restart, 10, **kw).nfe(VESDE()) == 19 + 8 + 6
    output_law(Restart, SDES["VE"], 10, **kw)  # asserts result.nfe == nfe(sde) and the draws taken
    assert make(Restart, 10, **kw, corrector=Langevin(steps_per_level=2)).nfe(VESDE()) == 33 + 18
    assert make(DPMSolverPP2MSDE, 10, corrector=Langevin()).nfe(VESDE()) == 19


# ---- towards the target as NFE grows, VE / VP / sub-VP alike ---------------------------------------------------
@pytest.mark.parametrize("method", SAMPLERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("sde", ["VE", "VP"])
def test_converges_to_the_target_at_second_order(method, sde):
    # sigma_max 1e4: the prior sigma_max z then misses the data mean by a negligible MEAN sqrt(lam_0) / sigma_max.
    # Restart's inner Heun runs refine with the backbone (n = N / 4 levels), else their error would stay.
    def error(n):
        kw = dict(sigma_max=1e4, **({"inner_steps": n // 4} if method is Restart else {}))
        return w2(output_law(method, SDES[sde], n, **kw), target_law())

    errors = [error(n) for n in (64, 128, 256)]
    gains = [a / b for a, b in zip(errors, errors[1:])]
    assert min(gains) > 3.5 and errors[-1] < 1e-3, (errors, gains)


@pytest.mark.parametrize("method", SAMPLERS, ids=lambda c: c.__name__)
def test_ve_vp_subvp_give_the_same_samples(method):
    """Same noise levels, same draws: the sigma-space samplers do not depend on how the SDE scales x."""
    laws = [output_law(method, SDES[name], 6) for name in SDES]
    for other in laws[1:]:
        torch.testing.assert_close(other[0], laws[0][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(other[1], laws[0][1], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("method", SAMPLERS, ids=lambda c: c.__name__)
def test_a_sample_depends_only_on_its_seed(method):
    sde = VPSDE()
    score = GaussianScore(MEAN, LAM.float(), sde)
    run = lambda seeds: make(method, 6)(score, sde, (len(seeds), 1, H, W), noise=SeededNoise(seeds)).x
    together, alone = run([3, 7, 11]), run([11])
    torch.testing.assert_close(together[2:], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together[0], together[1])


# ---- bad settings ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    (dict(eta=-0.5), "eta must be a finite number >= 0"),
    (dict(S_noise=float("nan")), "S_noise must be a finite number >= 0"),
])
def test_dpmpp_2m_sde_refuses(kw, message):
    with pytest.raises(ValueError, match=message):
        make(DPMSolverPP2MSDE, 3, **kw)


@pytest.mark.parametrize("kw, message", [
    (dict(intervals=[]), "intervals wants a list of \\[t_min, t_max\\] pairs"),
    (dict(intervals=[(0.1, 0.2, 0.3)]), "each interval is a \\[t_min, t_max\\] pair"),
    (dict(intervals=[(0.3, 0.06)]), "t_max must be a finite number > 0.3 \\(t_min\\)"),
    (dict(intervals=[(0.06, 500.0)]), "t_max <= sigma_max"),
    (dict(intervals=[(1e-6, 0.3)]), "t_min must lie between"),
    (dict(intervals=[(90.0, 95.0)]), "t_min must lie between"),
    (dict(repeats=0), "repeats must be an integer >= 1"),
    (dict(inner_steps=1), "inner_steps must be an integer >= 2"),
    (dict(repeats=[1, 2]), "repeats wants an int or one int per interval \\(1\\)"),
    (dict(inner_steps=2.5), "inner_steps must be an integer >= 2, got 2.5"),
    (dict(intervals=[(0.06, 0.3), (0.061, 0.5)]), "as another interval does"),
])
def test_restart_refuses(kw, message):
    """Bad fields at construction; intervals that do not fit the run's levels before the first evaluation."""
    def run():
        make(Restart, 8, **kw)(lambda x, t: pytest.fail("the score was evaluated"), VESDE(), (1, 1, H, W),
                               noise=RecordedNoise([torch.zeros(1, 1, H, W)]))

    with pytest.raises(ValueError, match=message):
        run()
