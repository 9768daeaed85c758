"""Classifier-free guidance on an exact class-conditional Gaussian mixture (models.gaussian.GaussianMixtureScore).

Two classes, x0 | k ~ N(+-M u, V I) on 1x4x4 images, u the unit constant image. Guidance acts only along u
(the posterior p_t(k | x) depends on y = <x, u> alone), so the guided probability-flow ODE is, along u, the
1-d ODE dy/dsigma = -sigma score_w(y, sigma) (VE: x_t = x0 + sigma z), integrated here independently with
a fine Heun grid; across u the samples keep the class's variance V whatever the scale.
PC samplers use the official batch-mean Langevin step size: on 16-pixel images the per-sample norms that
`step_size: sample` divides are too noisy (measured: +27% variance at 400 steps, +1.5% with 'batch').
"""

import functools
import math

import pytest
import torch

from pds_lightning.models.gaussian import GaussianMixtureScore
from pds_lightning.sampling import PC, PDS, EDMHeun, Langevin, ProbabilityFlowODE, generate
from pds_lightning.sampling.guidance import guided_score
from pds_lightning.sde import VESDE

M, V = 1.0, 0.25
SHAPE = (1, 4, 4)
D = 16
U = torch.ones(SHAPE, dtype=torch.float64) / D ** 0.5
SDE = VESDE(sigma_min=0.01, sigma_max=5.0, num_scales=400)
N = 1024
SEEDS = list(range(N))


def mixture() -> GaussianMixtureScore:
    return GaussianMixtureScore(torch.stack([-M * U, M * U]).float(), V, SDE)


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(y = <x, u> per sample, the component across u)."""
    y = (x.double() * U).flatten(1).sum(1)
    return y, x.double() - y.reshape(-1, 1, 1, 1) * U


@functools.cache
def reference_ode_y(scale: float, cls: int, n: int = 20000, steps: int = 400) -> torch.Tensor:
    """Samples of y from the guided 1-d probability-flow ODE, Heun in sigma, from y ~ N(0, sigma_max^2).

    400 steps agree with 2000 to 1.2e-4 per sample at scales 0, 1 and 3 (the tests' tolerances are >= 0.01)."""
    mu = torch.tensor([-M, M], dtype=torch.float64)

    def score(y, sigma):
        v = V + sigma ** 2
        post = torch.softmax(-(y[:, None] - mu) ** 2 / (2 * v), dim=1)
        cond = -(y - mu[cls]) / v
        uncond = (post * (-(y[:, None] - mu) / v)).sum(1)
        return uncond + (1 + scale) * (cond - uncond)

    g = torch.Generator().manual_seed(0)
    y = SDE.sigma_max * torch.randn(n, generator=g, dtype=torch.float64)
    sigmas = torch.exp(torch.linspace(math.log(SDE.sigma_max), math.log(SDE.sigma_min), steps + 1, dtype=torch.float64))
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d1 = -s * score(y, s)
        y_euler = y + (s_next - s) * d1
        d2 = -s_next * score(y_euler, s_next)
        y = y + (s_next - s) * 0.5 * (d1 + d2)
    return y


def test_guided_score_is_the_cfg_combination_in_one_batched_call():
    net = mixture()
    calls = []

    def score_fn(x, t, labels):
        calls.append(x.shape[0])
        return net(x, t, labels)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, *SHAPE, generator=g)
    t = torch.rand(6, generator=g) * 0.5 + 0.01
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    for w in (0.0, 1.0, 3.0):
        calls.clear()
        got = guided_score(score_fn, labels, w, null_class=2)(x, t)
        cond, uncond = net(x, t, labels), net(x, t)
        torch.testing.assert_close(got, uncond + (1 + w) * (cond - uncond), rtol=1e-5, atol=1e-5)
        assert calls == ([6] if w == 0 else [12])  # one network call; doubled batch only when guiding


def test_mixture_unconditional_score_is_the_posterior_weighted_sum():
    net = mixture()
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.1, 0.5, 0.9])
    sigma = SDE.marginal_prob(torch.zeros(3, 1, 1, 1), t)[1].flatten().double()
    v = (V + sigma ** 2).reshape(-1, 1, 1, 1)
    xs = x.double()
    logp = torch.stack([-(xs - mu).square().flatten(1).sum(1) / (2 * v.flatten()) for mu in (-M * U, M * U)], 1)
    post = torch.softmax(logp, 1)
    expected = sum(post[:, k].reshape(-1, 1, 1, 1) * -(xs - mu) / v for k, mu in enumerate((-M * U, M * U)))
    torch.testing.assert_close(net(x, t).double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net(x, t, torch.tensor([2, 2, 2])), net(x, t))  # null class = unconditional


class MixtureStatistics:
    """Exact PDS statistics of the mixture in the official form: log1p E|fft2 x|^2 and E x^2 per pixel."""

    def freq_statistic(self):
        power = torch.full(SHAPE, D * V, dtype=torch.float64)
        power[:, 0, 0] += float(torch.fft.fft2(M * U).abs()[0, 0, 0]) ** 2  # the class means are +-M u
        return torch.log1p(power).float()

    def space_statistic(self):
        return (M * U) ** 2 + V


def pds_statistics() -> MixtureStatistics:
    return MixtureStatistics()


BATCH_RULE = Langevin(step_size="batch")


@pytest.mark.parametrize("sampler", [
    PC(steps=400, corrector=BATCH_RULE),
    PC(steps=400, corrector=BATCH_RULE, pds=PDS(filters="both", alpha=3.0, predictor="consistent")),
    ProbabilityFlowODE(steps=200),
    EDMHeun(steps=64),
], ids=["pc", "pc_pds", "ode", "edm_heun"])
def test_guidance_zero_samples_the_class_gaussian(sampler):
    cls = torch.tensor([0, 1]).repeat(N // 2)
    stats = pds_statistics() if sampler.pds is not None else None
    x = generate(sampler, mixture(), SDE, SEEDS, SHAPE, statistics=stats, classes=cls).x
    y, across = split(x)
    sign = cls.double() * 2 - 1
    n_cls = N // 2
    for k in (0, 1):
        yk = y[cls == k]
        assert abs(yk.mean().item() - float(sign[cls == k][0]) * M) < 5 * (V / n_cls) ** 0.5
        assert abs(yk.var().item() / V - 1) < 5 * (2 / n_cls) ** 0.5 + 0.06
    var_across = across.square().flatten(1).sum(1).mean().item() / (D - 1)  # D-1 dims across u
    assert abs(var_across / V - 1) < 5 * (2 / (N * (D - 1))) ** 0.5 + 0.06


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guided_ode_moves_samples_as_the_guided_score_predicts(scale):
    cls = torch.ones(N, dtype=torch.long)  # class +M u; the other class sits at -M u
    x = generate(ProbabilityFlowODE(steps=200, guidance_scale=scale), mixture(), SDE, SEEDS, SHAPE, classes=cls).x
    y, across = split(x)
    ref = reference_ode_y(scale, cls=1)
    plain = reference_ode_y(0.0, cls=1)
    # guidance pushes class 1 away from class 0: the reference mean moves beyond +M by a clear margin
    assert ref.mean() > plain.mean() + 0.05
    assert abs(y.mean().item() - ref.mean().item()) < 5 * (ref.var().item() / N) ** 0.5 + 0.01
    assert abs(y.std().item() / ref.std().item() - 1) < 5 / (2 * N) ** 0.5 + 0.03
    var_across = across.square().flatten(1).sum(1).mean().item() / (D - 1)  # unchanged by guidance
    assert abs(var_across / V - 1) < 5 * (2 / (N * (D - 1))) ** 0.5 + 0.06


@pytest.mark.parametrize("sampler", [PC(steps=400, guidance_scale=2.0, corrector=BATCH_RULE),
                                     PC(steps=400, guidance_scale=2.0, corrector=BATCH_RULE,
                                        pds=PDS(filters="both", alpha=3.0))], ids=["pc", "pc_pds"])
def test_guided_pc_pushes_away_from_the_other_class(sampler):
    cls = torch.ones(N // 2, dtype=torch.long)
    stats = pds_statistics() if sampler.pds is not None else None
    guided = split(generate(sampler, mixture(), SDE, SEEDS[: N // 2], SHAPE, statistics=stats, classes=cls).x)[0]
    plain_sampler = sampler.replace(guidance_scale=0.0)
    plain = split(generate(plain_sampler, mixture(), SDE, SEEDS[: N // 2], SHAPE, statistics=stats, classes=cls).x)[0]
    assert guided.mean() > plain.mean() + 0.05


def test_seed_and_class_fix_a_sample_whatever_the_batch():
    sampler = PC(steps=50, guidance_scale=1.0, pds=PDS(filters="both", alpha=3.0))
    stats = pds_statistics()
    seeds, cls = [5, 9, 11, 12], torch.tensor([1, 0, 1, 0])
    together = generate(sampler, mixture(), SDE, seeds, SHAPE, statistics=stats, classes=cls).x
    for i, s in enumerate(seeds):
        alone = generate(sampler, mixture(), SDE, [s], SHAPE, statistics=stats, classes=cls[i:i + 1]).x
        torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-5)
    other = generate(sampler, mixture(), SDE, seeds, SHAPE, statistics=stats, classes=1 - cls).x
    assert (other - together).abs().amax() > 0.1  # the class matters


def test_class_errors_are_clear():
    net = mixture()
    with pytest.raises(ValueError, match="class 2 is out of range: the model has 2 classes"):
        generate(PC(steps=5), net, SDE, [0, 1], SHAPE, classes=[0, 2])
    with pytest.raises(ValueError, match="guidance_scale 1.0 but no classes"):
        generate(PC(steps=5, guidance_scale=1.0), net, SDE, [0], SHAPE)
    with pytest.raises(ValueError, match="not class-conditional"):
        generate(PC(steps=5), lambda x, t: -x, SDE, [0], SHAPE, classes=[0])
    with pytest.raises(ValueError, match="1 classes for 2 seeds"):
        generate(PC(steps=5), net, SDE, [0, 1], SHAPE, classes=[0])
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        PC(guidance_scale=-1.0)
