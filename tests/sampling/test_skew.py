"""The skew-symmetric S of the Langevin corrector (sampling/skew.py, docs/pds_stochastic.md) on exact Gaussian targets.

Dense operators on 4 x 6 images (24 pixels) are read off the code itself (score, M M^T, S applied to unit images),
so the stationarity statements are checked exactly, without sampling noise.
"""

import math

import pytest
import torch
from helpers import gaussian_statistics

from pds_lightning.legacy import sampler_from_hparam
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling import PC, PDS, DPMSolverPP2MSDE, EDMHeun, Langevin, RecordedNoise, generate
from pds_lightning.sampling.skew import PairedRotation, Skew
from pds_lightning.sampling.step import StepContext
from pds_lightning.sde import VESDE

H, W, MEAN = 4, 6, 0.4
LAM = power_law_spectrum(H, W, variance=0.05)
SDE = VESDE(0.01, 10.0, 100)
T = 0.05  # sigma(t) ~ 0.014: the modes' variances lam + sigma^2 still differ by decades


class SymmetricCoupling(Skew):
    """The negative control: PairedRotation's coupling with a + sign, symmetric, which must break stationarity."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, g):
        G = torch.fft.rfft2(g)
        Y = torch.zeros_like(G)
        Y[..., 1], Y[..., 2] = self.scale * G[..., 2], self.scale * G[..., 1]
        return torch.fft.irfft2(Y, s=g.shape[-2:])


def dense(op) -> torch.Tensor:
    """The matrix of a linear operator on [1, 1, H, W] float64 images, column p = op(e_p)."""
    eye = torch.eye(H * W, dtype=torch.float64).view(H * W, 1, H, W)
    return op(eye).reshape(H * W, H * W).T


def operators(skew, alpha=2.0):
    """(Sigma, B, S) of the target at T: Sigma^-1 from the score's Jacobian, B = M M^T and S from the code."""
    score = GaussianScore(MEAN, LAM, SDE)
    t = torch.full((H * W,), T, dtype=torch.float64)
    zero = score(torch.zeros(1, 1, H, W, dtype=torch.float64), t[:1])
    precision = -dense(lambda e: score(e, t) - zero)
    M = PDS(filters="freq", alpha=alpha).preconditioner(gaussian_statistics(LAM, MEAN))
    return torch.linalg.inv(precision), dense(M.drift), dense(skew)


def test_paired_rotation_is_skew_symmetric_and_couples_different_radii():
    S = dense(PairedRotation(0.7))
    torch.testing.assert_close(S.T, -S, rtol=0, atol=1e-12)
    assert S.abs().max() > 0.1
    # in Fourier: the coefficient at (ky, 1) becomes 0.7 times (ky, 2) and (ky, 2) becomes -0.7 times (ky, 1)
    x = torch.randn(2, 3, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X, Y = torch.fft.rfft2(x), torch.fft.rfft2(PairedRotation(0.7)(x))
    torch.testing.assert_close(Y[..., 1], 0.7 * X[..., 2])
    torch.testing.assert_close(Y[..., 2], -0.7 * X[..., 1])
    assert Y[..., [0, 3]].abs().max() < 1e-12  # column 0 and the Nyquist column are left alone
    with pytest.raises(ValueError, match="images must be at least 5 pixels wide, got width 4"):
        PairedRotation()(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        PairedRotation(0.0)


@pytest.mark.parametrize("skew, keeps", [(PairedRotation(2.0), True), (SymmetricCoupling(2.0), False)])
def test_drift_with_skew_keeps_the_gaussian_stationary(skew, keeps):
    """dx = (B + S) grad log p dt + sqrt(2) M dw keeps N(mu, Sigma) iff A Sigma + Sigma A^T = -2 B, A = -(B + S)
    Sigma^-1: (B + S) + (B + S)^T = 2 B, i.e. S^T = -S."""
    Sigma, B, S = operators(skew)
    A = -(B + S) @ torch.linalg.inv(Sigma)
    residual = (A @ Sigma + Sigma @ A.T + 2 * B).abs().max() / B.abs().max()
    assert (residual < 1e-9) == keeps, float(residual)


def chain_stationary_covariance(Sigma, B, S, eps):
    """Stationary covariance P of the Euler chain x' = x + eps (B + S) score + sqrt(2 eps) M z, by doubling:
    P = sum_k T^k Q T^kT with T = I - eps (B + S) Sigma^-1, Q = 2 eps B."""
    T_ = torch.eye(len(B), dtype=torch.float64) - eps * (B + S) @ torch.linalg.inv(Sigma)
    P = 2 * eps * B
    for _ in range(60):  # 2^60 steps
        P, T_ = P + T_ @ P @ T_.T, T_ @ T_
    return P


@pytest.mark.parametrize("skew, keeps", [(PairedRotation(2.0), True), (SymmetricCoupling(2.0), False)])
def test_the_discretised_chain_keeps_the_law_as_the_step_shrinks(skew, keeps):
    """The corrector's chain is Euler: its stationary law is Sigma + O(eps) with a skew S (as with S = 0), and
    stays away from Sigma with a symmetric coupling however small the step."""
    Sigma, B, S = operators(skew)
    limit = step_limit(Sigma, B, S)
    errors = [float((chain_stationary_covariance(Sigma, B, S, f * limit) - Sigma).abs().max() / Sigma.abs().max())
              for f in (0.02, 0.01, 0.005)]
    if keeps:
        assert errors[-1] < 0.01 and errors[0] / errors[1] > 1.8 and errors[1] / errors[2] > 1.8, errors
    else:
        assert min(errors) > 0.05, errors


def step_limit(Sigma, B, S) -> float:
    """min over eigenvalues mu of (B + S) Sigma^-1 of 2 Re mu / |mu|^2: explicit Euler's stability limit."""
    mu = torch.linalg.eigvals((B + S) @ torch.linalg.inv(Sigma))
    return float((2 * mu.real / mu.abs().square()).min())


def test_step_limit_is_where_the_chain_turns_unstable_and_skew_tightens_it():
    Sigma, B, S = operators(PairedRotation(10.0))
    limit = step_limit(Sigma, B, S)
    radius = lambda eps: float(torch.linalg.eigvals(torch.eye(H * W, dtype=torch.float64)
                                                    - eps * (B + S) @ torch.linalg.inv(Sigma)).abs().max())
    assert radius(0.99 * limit) < 1 < radius(1.01 * limit)
    unskewed = step_limit(Sigma, B, 0 * S)  # 2 / the fastest rate b / (lam + sigma^2), here an uncoupled mode
    assert limit < unskewed / 5  # |mu|^2 grows as scale^2 p1 p2 on the coupled pairs
    assert step_limit(*operators(PairedRotation(2.0))) == pytest.approx(unskewed, rel=1e-9)  # a mild S does not


def test_langevin_step_with_skew_by_hand():
    """x' = x + eps (M M^T + S) score + sqrt(2 eps) M z with eps = 2 a_t (snr ||M z|| / ||(M M^T + S) score||)^2:
    the snr rule sees the whole drift, so a large S shrinks the step as it tightens Euler's limit."""
    score = GaussianScore(MEAN, LAM, SDE)
    M = PDS(filters="freq", alpha=2.0).preconditioner(gaussian_statistics(LAM, MEAN))
    skew = PairedRotation(1.5)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, H, W, dtype=torch.float64, generator=g)
    z = torch.randn(2, 1, H, W, dtype=torch.float64, generator=g)
    t = torch.full((2,), T, dtype=torch.float64)
    got, _ = Langevin(0.16, 1, "sample", skew).update(StepContext(SDE, score, M, RecordedNoise([z])), x, t)
    s = score(x, t)
    drift = M.drift(s) + skew(s)
    xi = M.noise(z)
    eps = 2 * (0.16 * xi.flatten(1).norm(dim=1) / drift.flatten(1).norm(dim=1)) ** 2  # a_t = 1 on VE
    want = x + eps.view(-1, 1, 1, 1) * drift + (2 * eps).sqrt().view(-1, 1, 1, 1) * xi
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sampler", [
    PC(steps=6, corrector=Langevin(skew=PairedRotation(0.5)), pds=PDS(filters="freq")),
    PC(steps=6, corrector=Langevin(skew=PairedRotation(0.5))),
    EDMHeun(steps=4, corrector=Langevin(skew=PairedRotation(0.5)), pds=PDS()),
    DPMSolverPP2MSDE(steps=4, corrector=Langevin(steps_per_level=2, skew=PairedRotation(0.5)),
                     pds=PDS(filters="freq"))], ids=repr)
def test_samplers_take_the_skew_in_their_corrector_at_no_cost(sampler):
    score = GaussianScore(MEAN, LAM.float(), SDE)
    stats = gaussian_statistics(LAM, MEAN)
    with_skew = generate(sampler, score, SDE, [0, 1], (1, H, W), statistics=stats)
    plain = sampler.replace(corrector=sampler.corrector.replace(skew=None))
    without = generate(plain, score, SDE, [0, 1], (1, H, W), statistics=stats)
    assert with_skew.nfe == without.nfe == sampler.nfe(SDE)
    assert torch.isfinite(with_skew.x).all() and not torch.allclose(with_skew.x, without.x)
    assert sampler_from_hparam(sampler.config()) == sampler  # plain data, nested skew included
    assert sampler.config()["init_args"]["corrector"]["init_args"]["skew"] == {
        "class_path": "pds_lightning.sampling.skew.PairedRotation", "init_args": {"scale": 0.5}}


def test_langevin_refuses_a_skew_that_is_not_a_component():
    with pytest.raises(ValueError, match="Langevin: skew wants a skew component"):
        Langevin(skew=0.5)


def test_a_langevin_config_without_skew_is_the_one_stored_before():
    """Predict manifests compare the sampler config whole: S = 0 must not add a key to old folders' identity."""
    assert Langevin().config() == {"class_path": "pds_lightning.sampling.correctors.Langevin",
                                   "init_args": {"snr": 0.16, "steps_per_level": 1, "step_size": "sample"}}
    assert sampler_from_hparam(PC(corrector=Langevin()).config()).corrector.skew is None
