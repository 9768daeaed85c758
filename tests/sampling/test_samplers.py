"""Update rules, how the preconditioner enters them, errors and bookkeeping of the samplers."""

import math

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling import (ALD, PC, PDS, AncestralSampling, EulerMaruyama, Langevin, NonFiniteSampleError,
                                    ProbabilityFlowODE, RecordedNoise, ReverseDiffusion, SeededNoise, generate)
from pds_lightning.sampling.step import StepContext
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

SHAPE = (2, 2, 6, 6)


def precond():
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(2, 6, 6, generator=gen) + 0.5
    r = (r + torch.roll(torch.flip(r, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))) / 2
    return Preconditioner(r, torch.rand(2, 6, 6, generator=gen) + 0.5)


def gaussian(sde):
    return GaussianScore(0.4, power_law_spectrum(6, 6), sde)


SDES = {"VE": VESDE(num_scales=50), "VP": VPSDE(num_scales=50), "subVP": SubVPSDE(num_scales=50)}


@pytest.mark.parametrize("predictor", [ReverseDiffusion(), EulerMaruyama(), AncestralSampling()], ids=repr)
@pytest.mark.parametrize("kind", SDES)
def test_predictors_apply_the_preconditioner_to_drift_and_noise(predictor, kind):
    """With P: x_mean = x + M M^T (x_mean_vanilla - x) and x - x_mean = M (its vanilla noise term)."""
    sde = SDES[kind]
    if isinstance(predictor, AncestralSampling) and kind == "subVP":
        with pytest.raises(ValueError, match="AncestralSampling supports VE and VP SDEs only, not SubVPSDE"):
            generate(PC(predictor=predictor), gaussian(sde), sde, [0, 1], SHAPE[1:])
        return
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    z = torch.randn((1,) + SHAPE, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.6, 0.3], dtype=torch.float64)
    pre = precond()
    step = lambda p: predictor.update(StepContext(sde, gaussian(sde), p, RecordedNoise(z)), x, t)
    xv, mv = step(Preconditioner())
    xp, mp = step(pre)
    torch.testing.assert_close(mp, x + pre.drift(mv - x))
    torch.testing.assert_close(xp - mp, pre.noise(xv - mv))
    assert not torch.allclose(mp, mv)


@pytest.mark.parametrize("kind", SDES)
def test_ald_applies_the_preconditioner_to_drift_and_noise(kind):
    sde = SDES[kind]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    z = torch.randn((1,) + SHAPE, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.6, 0.3], dtype=torch.float64)
    pre = precond()
    step = lambda p: ALD(0.16, 1).update(StepContext(sde, gaussian(sde), p, RecordedNoise(z)), x, t)
    xv, mv = step(Preconditioner())
    xp, mp = step(pre)
    torch.testing.assert_close(mp, x + pre.drift(mv - x))
    torch.testing.assert_close(xp - mp, pre.noise(xv - mv))


@pytest.mark.parametrize("mode", ["sample", "batch"])
@pytest.mark.parametrize("kind", ["VE", "VP"])
def test_langevin_step_is_the_official_rule(mode, kind):
    sde = SDES[kind]
    score = gaussian(sde)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    z = torch.randn((1,) + SHAPE, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.6, 0.3], dtype=torch.float64)
    pre = precond()
    new_x, x_mean = Langevin(0.2, 1, mode).update(StepContext(sde, score, pre, RecordedNoise(z)), x, t)
    g, xi = pre.drift(score(x, t)), pre.noise(z[0])
    g_norm, xi_norm = g.flatten(1).norm(dim=1), xi.flatten(1).norm(dim=1)
    if mode == "batch":
        g_norm, xi_norm = g_norm.mean().expand(2), xi_norm.mean().expand(2)
    a = torch.ones(2, dtype=torch.float64) if kind == "VE" else sde.alphas.double()[(t * 49).long()]
    step = 2 * a * (0.2 * xi_norm / g_norm) ** 2
    torch.testing.assert_close(x_mean, x + step[:, None, None, None] * g)
    torch.testing.assert_close(new_x, x_mean + torch.sqrt(2 * step)[:, None, None, None] * xi)


def test_initial_sample_is_preconditioned_prior():
    sde = VESDE(num_scales=5)
    z = torch.randn(1 + 2 * 5, *SHAPE)
    pre = precond()
    captured = []
    score = lambda x, t: captured.append(x.clone()) or torch.zeros_like(x)
    PC()(score, sde, SHAPE, noise=RecordedNoise(z), preconditioner=pre)
    torch.testing.assert_close(captured[0], 50.0 * pre.noise(z[0]))


@pytest.mark.parametrize("sampler,nfe", [(PC(corrector=Langevin(steps_per_level=2)), 90),
                                         (PC(predictor=None, corrector=ALD()), 30),
                                         (PC(predictor=EulerMaruyama(), corrector=None), 30)], ids=repr)
def test_nfe_counts_score_evaluations(sampler, nfe):
    sde = VPSDE(num_scales=30)
    result = sampler(gaussian(sde), sde, SHAPE, noise=SeededNoise([0, 1]))
    assert result.nfe == nfe == sampler.nfe(sde) and torch.isfinite(result.x).all()


def test_speed_up_rediscretises_the_sde():
    sde = VESDE(num_scales=20)
    seen = []
    score = lambda x, t: seen.append(float(t[0])) or torch.zeros_like(x)
    result = PC(speed_up=4.0, corrector=None)(score, sde, SHAPE, noise=SeededNoise([0, 1]))
    assert result.nfe == 5 and seen[0] == 1.0 and seen[-1] == pytest.approx(4e-5)


def test_non_finite_sample_names_the_step():
    sde = VESDE(num_scales=10)
    score = lambda x, t: torch.full_like(x, math.inf) if float(t[0]) < 0.5 else torch.zeros_like(x)
    with pytest.raises(NonFiniteSampleError, match="step 5 of 10.*lower alpha") as err:
        PC(corrector=None, check_finite_every=1)(score, sde, SHAPE, noise=SeededNoise([0, 1]))
    assert err.value.step == 5
    with pytest.raises(NonFiniteSampleError, match="step 5 of 10"):
        PC(corrector=None, check_finite_every=3)(score, sde, SHAPE, noise=SeededNoise([0, 1]))


def test_ode_sampler_refuses_a_preconditioner_and_runs_without():
    sde = VESDE(num_scales=10)
    with pytest.raises(ValueError, match="not the model's probability-flow ODE"):
        ProbabilityFlowODE()(gaussian(sde), sde, SHAPE, noise=SeededNoise([0, 1]), preconditioner=precond())
    result = ProbabilityFlowODE(denoise=False)(gaussian(sde), sde, SHAPE, noise=SeededNoise([0, 1]),
                                               preconditioner=Preconditioner())
    assert result.nfe == 20 and torch.isfinite(result.x).all()


def test_ode_heun_step_is_exact_for_linear_drift():
    """Probability flow of a VE SDE with score -x/(1+sigma^2): x(t) = x_T sqrt((1+sigma_t^2)/(1+sigma_T^2))."""
    sde = VESDE(num_scales=10)
    score = lambda x, t: -x / (1 + sde.sigma(t) ** 2)[:, None, None, None]
    z = torch.randn(1, *SHAPE, dtype=torch.float64)
    x = ProbabilityFlowODE(steps=400, denoise=False)(score, sde, SHAPE, noise=RecordedNoise(z), dtype=torch.float64).x
    sigma_eps = 0.01 * 5000 ** (1e-5 * 10 / 400)  # eps = default_eps * num_scales / n_steps
    expected = 50 * z[0] * math.sqrt((1 + sigma_eps ** 2) / (1 + 50 ** 2))
    torch.testing.assert_close(x, expected, rtol=2e-3, atol=1e-5)


def test_seeded_noise():
    like = torch.zeros(3, 2, 4, 4)
    a = SeededNoise([7, 8, 9]).noise(like)
    assert torch.equal(a[1], torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(8)))
    assert torch.equal(SeededNoise(torch.tensor([9])).noise(like[:1])[0], a[2])
    with pytest.raises(ValueError, match="number of seeds"):
        SeededNoise([1]).noise(like)
    rec = RecordedNoise(torch.zeros(1, 3, 2, 4, 4))
    rec.noise(like)
    with pytest.raises(IndexError, match="exhausted"):
        rec.noise(like)


class Stats:
    def freq_statistic(self):
        s = torch.ones(2, 6, 6)
        s[:, 0, 0] = 10.0
        return s

    def space_statistic(self):
        return torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0)) + 0.1


def test_component_validation():
    with pytest.raises(ValueError, match="predictor wants a predictor component or None, got 'rd'"):
        PC(predictor="rd")
    with pytest.raises(ValueError, match="corrector wants a corrector component or None, got 'hmc'"):
        PC(corrector="hmc")
    with pytest.raises(ValueError, match="alpha must be a finite number > 1"):
        PDS(alpha=1.0)
    with pytest.raises(ValueError, match="alpha must be a finite number > 1 .* or an alpha chooser"):
        PDS(alpha="strong")
    with pytest.raises(TypeError, match="unexpected keyword argument 'pds'"):
        ProbabilityFlowODE(pds=PDS())
    with pytest.raises(ValueError, match=r"give either steps \(10\) or speed_up \(2.0\), not both"):
        PC(steps=10, speed_up=2.0)
    with pytest.raises(ValueError, match="leaves int"):
        PC(speed_up=30.0).steps_on(VESDE(num_scales=20))
    assert PC(speed_up=2.0).steps_on(VESDE(num_scales=20)) == (10, pytest.approx(2e-5))


def test_generate_builds_the_preconditioner_from_statistics():
    sde = VESDE(num_scales=20)
    score = gaussian(sde)
    sampler = PC(speed_up=4.0, corrector=Langevin(step_size="batch"), pds=PDS(filters="both", alpha=3.0))
    with pytest.raises(ValueError, match="no data statistics"):
        generate(sampler, score, sde, [0, 1], (2, 6, 6))
    stats = Stats()
    result = generate(sampler, score, sde, torch.tensor([0, 1]), (2, 6, 6), statistics=stats)
    pre = Preconditioner.from_statistics(stats.freq_statistic(), stats.space_statistic(), 3.0)
    expected = sampler(score, sde, SHAPE, noise=SeededNoise([0, 1]), preconditioner=pre)
    assert result.x.shape == SHAPE and result.nfe == 10
    assert torch.equal(result.x, expected.x)


def test_generate_checks_the_shape():
    sde = VESDE(num_scales=4)
    with pytest.raises(ValueError, match="batch 3 but 2 seeds"):
        generate(PC(), gaussian(sde), sde, [0, 1], (3, 2, 6, 6))
