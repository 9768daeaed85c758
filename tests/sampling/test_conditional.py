"""Inpainting and colorization with the PC sampler on an exact Gaussian score.

The known part of the output is the input's exactly (vanilla and PDS, both restrictions), and the filled
part follows the Gaussian conditional: its mean is S_uk S_kk^-1 (x_k - m) + m and its variance the Schur
complement, computed here from the model's covariance written out as a matrix.
"""

import math

import pytest
import torch

from helpers import GaussianModule
from pds_lightning.sampling import (ALD, PC, PDS as PDSComponent, AncestralSampling, EulerMaruyama, Langevin,
                                    ProbabilityFlowODE, ReverseDiffusion, generate)
from pds_lightning.data.tasks import Colorize, Inpaint
from pds_lightning.sampling.conditional import KnownPart, RestrictedPreconditioner, clip_keeping_gray, color_basis
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sde import VESDE, VPSDE
from pds_lightning.statistics import ImageStatistics

H, MEAN, VAR = 8, 0.5, 0.05


def gaussian_problem(sde, channels=1):
    lam = power_law_spectrum(H, H, variance=VAR, channels=channels).double()
    target = GaussianScore(MEAN, lam, sde)
    power = H * H * lam.float().clone()
    power[:, 0, 0] += (H * H * MEAN) ** 2
    stats = ImageStatistics.from_moments(1000, power, torch.full_like(power, MEAN), torch.full_like(power, MEAN ** 2 + VAR))
    return target, lam, stats


def covariance(lam):
    """The circulant covariance F^-1 diag(lam) F of one channel as a [D, D] matrix."""
    D = H * H
    basis = torch.eye(D, dtype=torch.float64).reshape(D, 1, H, H)
    return torch.fft.ifft2(torch.fft.fft2(basis) * lam[0]).real.reshape(D, D)


def center_mask(channels=1):
    mask = torch.ones(1, channels, H, H)
    mask[..., 2:6, 2:6] = 0
    return mask


PDS = [("project", False), ("project", True), ("subspace", True)]


def pc(restrict, pds, **kw):
    """PC with PDS restricted as given, or vanilla (the preconditioner itself is passed to the call)."""
    return PC(pds=PDSComponent(filters="both", restrict=restrict) if pds else None, **kw)


@pytest.mark.parametrize("restrict,pds", PDS)
def test_inpainting_keeps_the_known_pixels_exactly_and_fills_with_the_conditional(restrict, pds):
    sde = VESDE(0.01, 5.0, 200)
    target, lam, stats = gaussian_problem(sde)
    x0 = target.sample(1, torch.Generator().manual_seed(0)).float()
    B = 256
    known = Inpaint("mnist").known_part(x0.expand(B, -1, -1, -1), center_mask())
    pre = Preconditioner.from_statistics(stats.freq_statistic(), stats.space_statistic(), 5.0) if pds else None
    out = pc(restrict, pds, steps=200)(target, sde, None, known=known, noise=SeededNoise(range(B)),
                                       preconditioner=pre).x
    m = center_mask().flatten().bool()
    assert torch.equal(out.flatten(1)[:, m], x0.flatten(1)[:, m].expand(B, -1))  # bit for bit
    cov, xk = covariance(lam), x0.double().flatten()[m]
    u = ~m
    s_uk, s_kk = cov[u][:, m], cov[m][:, m]
    cond_mean = MEAN + s_uk @ torch.linalg.solve(s_kk, xk - MEAN)
    cond_var = (cov[u][:, u] - s_uk @ torch.linalg.solve(s_kk, s_uk.T)).diagonal()
    filled = out.double().flatten(1)[:, u]
    se = (cond_var / B).sqrt()
    assert ((filled.mean(0) - cond_mean).abs() / se).max() < 4.5
    ratio = (filled.var(0) / cond_var).mean()
    assert 0.8 < ratio < (1.25 if restrict == "project" else 1.4), ratio.item()
    # the prior draw alone (no conditioning) would be far off: the test can tell
    assert ((MEAN - cond_mean).abs() / se).max() > 4.5


@pytest.mark.parametrize("restrict,pds", PDS)
@pytest.mark.parametrize("predictor,corrector", [(ReverseDiffusion(), Langevin()), (EulerMaruyama(), None),
                                                 (AncestralSampling(), ALD()), (None, Langevin())], ids=repr)
def test_colorization_keeps_the_gray_axis_for_every_pc_sampler(restrict, pds, predictor, corrector):
    sde = VPSDE(0.1, 20.0, 100)
    target, _, stats = gaussian_problem(sde, channels=3)
    rgb = target.sample(4, torch.Generator().manual_seed(1)).float()
    gray = rgb.mean(1, keepdim=True).expand(-1, 3, -1, -1)  # what a gray input looks like
    known = Colorize("mnist").known_part(gray, None)
    pre = Preconditioner.from_statistics(stats.freq_statistic(), stats.space_statistic(), 5.0) if pds else None
    sampler = pc(restrict, pds, steps=50, predictor=predictor, corrector=corrector)
    out = sampler(target, sde, None, known=known, noise=SeededNoise(range(4)), preconditioner=pre).x
    assert torch.allclose(out.mean(1), gray[:, 0], atol=1e-6, rtol=0)  # float rounding of the basis change
    assert out.std(1).mean() > 0.05  # the colour is filled in, not left gray
    assert torch.isfinite(out).all()


def test_color_basis_is_orthonormal_with_the_gray_axis_first():
    U = color_basis()
    assert torch.allclose(U.T @ U, torch.eye(3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(U[:, 0], torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64))


def test_restricted_preconditioner_never_touches_the_known_part():
    _, _, stats = gaussian_problem(VESDE(), channels=1)
    pre = Preconditioner.from_statistics(stats.freq_statistic(), stats.space_statistic(), 5.0)
    known = KnownPart(torch.rand(2, 1, H, H), center_mask())
    restricted = RestrictedPreconditioner(pre, known)
    g = torch.randn(2, 1, H, H, generator=torch.Generator().manual_seed(0))
    m = center_mask().expand(2, -1, -1, -1).bool()
    for y in (restricted.noise(g), restricted.drift(g)):
        assert (y[m] == 0).all() and (y[~m] != 0).all()
    # drift is P M M^T P: symmetric positive semi-definite on the unknown part
    h = torch.randn(2, 1, H, H, generator=torch.Generator().manual_seed(1))
    assert torch.allclose((restricted.drift(g) * h).sum(), (g * restricted.drift(h)).sum(), rtol=1e-5)


def test_a_seed_gives_the_same_completion_in_any_batch():
    module = GaussianModule()
    sampler = PC(steps=20, pds=PDSComponent(filters="both"))
    x0 = module.target.sample(3, torch.Generator().manual_seed(2)).float()
    mask = center_mask(3)
    both = generate(sampler, module.target, module.sde, [7, 8, 9], None, module.data_statistics,
                    known=Inpaint("mnist").known_part(x0, mask)).x
    one = generate(sampler, module.target, module.sde, [8], None, module.data_statistics,
                   known=Inpaint("mnist").known_part(x0[1:2], mask)).x
    assert torch.equal(both[1:2], one)


def test_bad_inputs_are_named():
    x = torch.rand(2, 1, H, H)
    with pytest.raises(ValueError, match="inpainting needs a mask"):
        Inpaint("mnist").known_part(x, None)
    with pytest.raises(ValueError, match="colorization needs RGB images"):
        Colorize("mnist").known_part(x, None)
    with pytest.raises(ValueError, match="0 \\(unknown\\) and 1"):
        KnownPart(x, torch.full((1, 1, H, H), 0.5))
    with pytest.raises(ValueError, match="run pds_lightning.sampling.PC"):
        generate(ProbabilityFlowODE(), None, VESDE(), [0, 1], None, known=KnownPart(x, center_mask()))
    with pytest.raises(ValueError, match=r"PDS: unknown restrict 'x'; choose one of \('project', 'subspace'\)"):
        PDSComponent(restrict="x")


def test_clip_keeping_gray_stays_in_range_and_keeps_the_gray():
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    x = x - x.mean(1, keepdim=True) + x.mean(1, keepdim=True).clamp(0, 1)  # gray in [0, 1], colours far out
    y = clip_keeping_gray(x)
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    assert torch.allclose(y.mean(1), x.mean(1), atol=1e-6)
    inside = ((x >= 0) & (x <= 1)).all(1, keepdim=True).expand_as(x)
    assert inside.any() and torch.equal(y[inside], x[inside])  # colours already in range are left alone
