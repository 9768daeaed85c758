"""Update rules, how the preconditioner enters them, errors and bookkeeping of the samplers."""

import math

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.legacy import SamplerSettings
from pds_lightning.sampling import NonFiniteSampleError, RecordedNoise, SeededNoise, generate, ode_sampler, pc_sampler
from pds_lightning.sampling.correctors import CORRECTORS
from pds_lightning.sampling.predictors import PREDICTORS
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


@pytest.mark.parametrize("name", ["reverse_diffusion", "euler_maruyama", "ancestral_sampling"])
@pytest.mark.parametrize("kind", SDES)
def test_predictors_apply_the_preconditioner_to_drift_and_noise(name, kind):
    """With P: x_mean = x + M M^T (x_mean_vanilla - x) and x - x_mean = M (its vanilla noise term)."""
    sde = SDES[kind]
    if name == "ancestral_sampling" and kind == "subVP":
        with pytest.raises(ValueError, match="VE and VP"):
            PREDICTORS[name](sde, gaussian(sde), Preconditioner(), SeededNoise([0, 1]))
        return
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    z = torch.randn((1,) + SHAPE, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.6, 0.3], dtype=torch.float64)
    pre = precond()
    step = lambda p: PREDICTORS[name](sde, gaussian(sde), p, RecordedNoise(z)).update(x, t)
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
    step = lambda p: CORRECTORS["ald"](sde, gaussian(sde), p, RecordedNoise(z), 0.16, 1).update(x, t)
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
    new_x, x_mean = CORRECTORS["langevin"](sde, score, pre, RecordedNoise(z), 0.2, 1, mode).update(x, t)
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
    pc_sampler(score, sde, SHAPE, noise=RecordedNoise(z), preconditioner=pre)
    torch.testing.assert_close(captured[0], 50.0 * pre.noise(z[0]))


@pytest.mark.parametrize("predictor,corrector,n_corr,nfe", [("reverse_diffusion", "langevin", 2, 90),
                                                            ("none", "ald", 1, 30), ("euler_maruyama", "none", 1, 30)])
def test_nfe_counts_score_evaluations(predictor, corrector, n_corr, nfe):
    sde = VPSDE(num_scales=30)
    result = pc_sampler(gaussian(sde), sde, SHAPE, noise=SeededNoise([0, 1]), predictor=predictor,
                        corrector=corrector, n_corrector_steps=n_corr)
    assert result.nfe == nfe and torch.isfinite(result.x).all()


def test_speed_up_rediscretises_the_sde():
    sde = VESDE(num_scales=20)
    seen = []
    score = lambda x, t: seen.append(float(t[0])) or torch.zeros_like(x)
    result = pc_sampler(score, sde, SHAPE, noise=SeededNoise([0, 1]), speed_up=4.0, corrector="none")
    assert result.nfe == 5 and seen[0] == 1.0 and seen[-1] == pytest.approx(4e-5)


def test_non_finite_sample_names_the_step():
    sde = VESDE(num_scales=10)
    score = lambda x, t: torch.full_like(x, math.inf) if float(t[0]) < 0.5 else torch.zeros_like(x)
    with pytest.raises(NonFiniteSampleError, match="step 5 of 10.*lower alpha") as err:
        pc_sampler(score, sde, SHAPE, noise=SeededNoise([0, 1]), corrector="none",
                   check_finite_every=1)
    assert err.value.step == 5
    with pytest.raises(NonFiniteSampleError, match="step 5 of 10"):
        pc_sampler(score, sde, SHAPE, noise=SeededNoise([0, 1]), corrector="none",
                   check_finite_every=3)


def test_ode_sampler_refuses_a_preconditioner_and_runs_without():
    sde = VESDE(num_scales=10)
    with pytest.raises(ValueError, match="not the model's probability-flow ODE"):
        ode_sampler(gaussian(sde), sde, SHAPE, noise=SeededNoise([0, 1]), preconditioner=precond())
    result = ode_sampler(gaussian(sde), sde, SHAPE, noise=SeededNoise([0, 1]), preconditioner=Preconditioner(),
                         denoise=False)
    assert result.nfe == 20 and torch.isfinite(result.x).all()


def test_ode_heun_step_is_exact_for_linear_drift():
    """Probability flow of a VE SDE with score -x/(1+sigma^2): x(t) = x_T sqrt((1+sigma_t^2)/(1+sigma_T^2))."""
    sde = VESDE(num_scales=10)
    score = lambda x, t: -x / (1 + sde.sigma(t) ** 2)[:, None, None, None]
    z = torch.randn(1, *SHAPE, dtype=torch.float64)
    x = ode_sampler(score, sde, SHAPE, noise=RecordedNoise(z), n_steps=400, denoise=False, dtype=torch.float64).x
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


def test_settings_validation():
    with pytest.raises(ValueError, match="unknown predictor 'rd'"):
        SamplerSettings(predictor="rd")
    with pytest.raises(ValueError, match="unknown corrector"):
        SamplerSettings(corrector="hmc")
    with pytest.raises(ValueError, match="alpha must be a finite number > 1"):
        SamplerSettings(alpha=1.0, preconditioner="both")
    with pytest.raises(ValueError, match="alpha='auto' does not apply.*needs a preconditioner"):
        SamplerSettings(alpha="auto")  # the default preconditioner is 'none'
    with pytest.raises(ValueError, match="a number > 1 or 'auto'"):
        SamplerSettings(alpha="strong", preconditioner="freq")
    with pytest.raises(ValueError, match="method 'ode' cannot use a PDS preconditioner"):
        SamplerSettings(method="ode", preconditioner="freq")
    with pytest.raises(ValueError, match="not both"):
        SamplerSettings(n_steps=10, speed_up=2.0)
    with pytest.raises(ValueError, match="leaves int"):
        SamplerSettings(speed_up=30.0).to_sampler().steps(VESDE(num_scales=20))
    assert SamplerSettings(speed_up=2.0).to_sampler().steps(VESDE(num_scales=20)) == (10, pytest.approx(2e-5))


def test_generate_builds_the_preconditioner_from_statistics():
    sde = VESDE(num_scales=20)
    score = gaussian(sde)
    settings = SamplerSettings(preconditioner="both", alpha=3.0, speed_up=4.0, step_size="batch")
    with pytest.raises(ValueError, match="no data statistics"):
        generate(settings, score, sde, [0, 1], (2, 6, 6))
    stats = Stats()
    result = generate(settings, score, sde, torch.tensor([0, 1]), (2, 6, 6), statistics=stats)
    pre = Preconditioner.from_statistics(stats.freq_statistic(), stats.space_statistic(), 3.0)
    expected = pc_sampler(score, sde, SHAPE, noise=SeededNoise([0, 1]), preconditioner=pre, speed_up=4.0,
                          step_size="batch")
    assert result.x.shape == SHAPE and result.nfe == 10
    assert torch.equal(result.x, expected.x)


def test_generate_checks_the_shape():
    sde = VESDE(num_scales=4)
    with pytest.raises(ValueError, match="batch 3 but 2 seeds"):
        generate(SamplerSettings(), gaussian(sde), sde, [0, 1], (3, 2, 6, 6))
