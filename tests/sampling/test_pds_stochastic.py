"""PDS in the noise of DPM-Solver++(2M) SDE (sampling/pds_sde.py, docs/pds_stochastic.md) on exact Gaussian targets.

With a frequency-only M the sampler stays affine in its draws and circulant, so test_solvers.py's impulse responses
give its output law exactly; with a space filter the law is read off impulses at every pixel (dense covariance).
"""

import math

import pytest
import torch
from helpers import circulant_law, gaussian_statistics, impulse_noise

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling import PDS, DPMSolverPP2MSDE, EDMStochastic, Karras, Langevin, RecordedNoise, Restart, generate
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

from test_solvers import LAM, MEAN, H, W, target_law, w2

SIGMA_MIN = 2e-3
LAM_SMALL = {4: power_law_spectrum(4, 4, variance=0.05)}
SDES = {"VE": VESDE(), "VP": VPSDE(), "subVP": SubVPSDE()}


def dpmpp_2m_sde(score_fn, sde, shape, *, noise, n_steps, preconditioner=None, dtype=torch.float32, sigma_min=None,
                 sigma_max=None, rho=7.0, **fields):
    """One run of the DPMSolverPP2MSDE component with `n_steps` Karras levels and the preconditioner M given."""
    sampler = DPMSolverPP2MSDE(steps=n_steps, schedule=Karras(rho, sigma_min, sigma_max), **fields)
    return sampler(score_fn, sde, shape, noise=noise, preconditioner=preconditioner, dtype=dtype)


def freq_preconditioner(alpha: float = 2.0) -> Preconditioner:
    """The official frequency filter of the 8 x 8 target at strength alpha (b = R^2 in [1, (alpha/(alpha-1))^2])."""
    return PDS(filters="freq", alpha=alpha).preconditioner(gaussian_statistics(LAM, MEAN))


def impulses(draws: int, rows_per_draw: int = 1, shape=(1, H, W)) -> RecordedNoise:
    return impulse_noise(draws, shape, rows_per_draw)


def law(sde, n_steps, preconditioner, sigma_max=80.0, **kw):
    """(mean image, per-mode variances) of the output, exactly: the sampler is affine and circulant in its draws."""
    noise = impulses(n_steps)
    x = dpmpp_2m_sde(GaussianScore(MEAN, LAM, sde), sde, (n_steps + 1, 1, H, W), noise=noise, n_steps=n_steps,
                     preconditioner=preconditioner, dtype=torch.float64, sigma_min=SIGMA_MIN, sigma_max=sigma_max,
                     **kw).x
    assert noise.calls == n_steps  # the initial draw, then one per step to sigma > 0: PDS draws nothing more
    return circulant_law(x)


# ---- a hand-computed two-step case ------------------------------------------------------------------------------
def test_two_steps_by_hand_per_mode():
    """1 x 2 images: the unitary Fourier modes u = (x0 + x1)/sqrt 2 (b = 1) and v = (x0 - x1)/sqrt 2 (b = 4) of the
    frequency filter R = [1, 2] (alpha 2 on the statistic [1, 0]) each follow the scalar 2M SDE with eta b."""
    sde = VESDE()
    lam, mu = (1.0, 0.5), (math.sqrt(2) * 1.0, 0.0)  # mode variances; mean image 1 -> mode means
    score = GaussianScore(1.0, torch.tensor([[[1.0, 0.5]]], dtype=torch.float64), sde)
    M = PDS(filters="freq", alpha=2.0).preconditioner(type("S", (), {"freq_statistic": lambda s: torch.tensor(
        [[[1.0, 0.0]]])})())
    torch.testing.assert_close(M.freq_filter, torch.tensor([[[1.0, 2.0]]]))
    draws = [(1.0, 0.2), (0.5, -0.3), (-1.0, 0.7)]  # pixel draws: x = 3 z0, then one per step
    # Karras rho 1 from 3 to 1: sigmas 3, 2, 1, 0; eta 1.
    def mode(k, b):
        D = lambda y, s: mu[k] + lam[k] / (lam[k] + s * s) * (y - mu[k])
        z = [(a + c) / math.sqrt(2) if k == 0 else (a - c) / math.sqrt(2) for a, c in draws]
        y, d_prev, h_prev = 3 * z[0], None, None
        for i, (s, s2) in enumerate([(3.0, 2.0), (2.0, 1.0)]):
            h = math.log(s / s2)
            d = D(y, s)
            w = 1 - math.exp(-(1 + b) * h)
            y_new = (s2 / s) * math.exp(-b * h) * y + w * d + s2 * math.sqrt(1 - math.exp(-2 * b * h)) * z[i + 1]
            if d_prev is not None:
                y_new += 0.5 * w * (d - d_prev) * h / h_prev
            y, d_prev, h_prev = y_new, d, h
        return D(y, 1.0)

    u, v = mode(0, 1.0), mode(1, 4.0)
    noise = RecordedNoise([torch.tensor([[[[a, c]]]], dtype=torch.float64) for a, c in draws])
    x = dpmpp_2m_sde(score, sde, (1, 1, 1, 2), noise=noise, preconditioner=M, n_steps=3, sigma_min=1.0,
                     sigma_max=3.0, rho=1.0, dtype=torch.float64).x.flatten().tolist()
    assert x == pytest.approx([(u + v) / math.sqrt(2), (u - v) / math.sqrt(2)], abs=1e-12)
    assert x == pytest.approx([0.8309485030, 1.2778890831], abs=1e-9)


def test_space_filter_is_the_scalar_integrator_per_pixel():
    """A white target (covariance lam I) decouples the pixels: with the space filter S each pixel p is the vanilla
    2M SDE with eta S_p^2, run alone with the same draws."""
    sde, n = VESDE(), 5
    S = torch.tensor([[[1.0, 1.5, 2.0, 1.2]]])
    score = GaussianScore(0.3, torch.full((1, 1, 4), 0.7, dtype=torch.float64), sde)
    draws = torch.randn(n, 1, 1, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kw = dict(n_steps=n, sigma_min=0.05, sigma_max=20.0, dtype=torch.float64, eta=0.8)
    x = dpmpp_2m_sde(score, sde, (1, 1, 1, 4), noise=RecordedNoise(list(draws)), preconditioner=Preconditioner(
        space_filter=S), **kw).x.flatten()
    for p in range(4):
        pixel = GaussianScore(0.3, torch.full((1, 1, 1), 0.7, dtype=torch.float64), sde)
        alone = dpmpp_2m_sde(pixel, sde, (1, 1, 1, 1), noise=RecordedNoise(list(draws[..., p:p + 1])),
                             **{**kw, "eta": 0.8 * float(S[0, 0, p]) ** 2}).x.item()
        assert x[p].item() == pytest.approx(alone, abs=1e-12), p


# ---- M = I is today's sampler; the law converges to the target -----------------------------------------------------
def test_no_filter_keeps_todays_bytes_and_a_unit_filter_the_same_law():
    sde = VESDE()
    score = GaussianScore(MEAN, LAM.float(), sde)
    z = torch.randn(6, 2, 1, H, W, generator=torch.Generator().manual_seed(0))
    run = lambda M: dpmpp_2m_sde(score, sde, (2, 1, H, W), noise=RecordedNoise(list(z)), preconditioner=M,
                                 n_steps=6, sigma_min=SIGMA_MIN, sigma_max=80.0).x
    vanilla = run(None)
    assert torch.equal(run(Preconditioner()), vanilla)  # no filter: the unpreconditioned code path, same bytes
    ones = Preconditioner(freq_filter=torch.ones(1, H, W))  # b = 1 through the per-mode integrator
    torch.testing.assert_close(run(ones), vanilla, rtol=0, atol=2e-5)
    mean, v = law(sde, 6, ones)
    mean0, v0 = law(sde, 6, None)
    torch.testing.assert_close(mean, mean0, rtol=0, atol=1e-12)
    torch.testing.assert_close(v, v0, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sde", ["VE", "VP"])
def test_preconditioned_law_converges_to_the_target_at_second_order(sde):
    # sigma_max 1e4: the prior's miss of the mean is negligible (as test_stochastic.py)
    errors = [w2(law(SDES[sde], n, freq_preconditioner(5.0), sigma_max=1e4), target_law()) for n in (64, 128, 256)]
    gains = [a / b for a, b in zip(errors, errors[1:])]
    assert min(gains) > 3.5 and errors[-1] < 1.5e-3, (errors, gains)
    # and the filter changed the law (b up to 1.56 on the weakest modes): not vanilla under another name
    assert abs(errors[0] - w2(law(SDES[sde], 64, None, sigma_max=1e4), target_law())) > 1e-5


def test_ve_vp_subvp_give_the_same_preconditioned_samples():
    laws = [law(SDES[name], 6, freq_preconditioner()) for name in SDES]
    for other in laws[1:]:
        torch.testing.assert_close(other[0], laws[0][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(other[1], laws[0][1], rtol=1e-8, atol=1e-12)


def dense_law(n_steps, preconditioner, size=4, sigma_max=1e4):
    """(mean [P], covariance [P, P]) of the output on a size x size target, from impulses at every pixel."""
    lam = LAM_SMALL[size]
    sde = VESDE()
    P = size * size
    noise = impulses(n_steps, P, (1, size, size))
    x = dpmpp_2m_sde(GaussianScore(MEAN, lam, sde), sde, (1 + n_steps * P, 1, size, size), noise=noise,
                     n_steps=n_steps, preconditioner=preconditioner, dtype=torch.float64, sigma_min=SIGMA_MIN,
                     sigma_max=sigma_max).x.flatten(1)
    kernels = x[1:] - x[0]
    return x[0], kernels.T @ kernels


def sqrtm(a):
    e, v = torch.linalg.eigh(a)
    return (v * e.clamp_min(0).sqrt()) @ v.T


def dense_w2(mean, cov, lam):
    """W2 per pixel between N(mean, cov) and the stationary target N(MEAN, F^-1 diag(lam) F) (not commuting)."""
    size = lam.shape[-1]
    P = size * size
    eye = torch.eye(P, dtype=torch.float64).view(P, 1, size, size)
    target = torch.fft.ifft2(torch.fft.fft2(eye) * lam).real.view(P, P)  # C e_p, column by column
    root = sqrtm(target)
    cross = sqrtm(root @ cov @ root)
    sq = (mean - MEAN).square().sum() + torch.trace(cov + target - 2 * cross)
    return math.sqrt(max(float(sq), 0.0) / P)


def test_space_filter_law_converges_to_the_target():
    """The space filter does not commute with the target's covariance (the integrator is exact per pixel only for
    a frozen denoiser, and D couples the pixels), and the law still converges at second order."""
    size = 4
    S = torch.linspace(1.0, 1.5, size * size).view(1, size, size)
    M = Preconditioner(space_filter=S)
    errors = [dense_w2(*dense_law(n, M, sigma_max=300.0), LAM_SMALL[size]) for n in (32, 64, 128)]
    gains = [a / b for a, b in zip(errors, errors[1:])]
    assert min(gains) > 3.2 and errors[-1] < 2e-3, (errors, gains)  # measured 3.6, 4.2: second order
    assert abs(errors[0] - dense_w2(*dense_law(32, None, sigma_max=300.0), LAM_SMALL[size])) > 1e-4  # S acted


# ---- the component: fields, NFE, refusals -------------------------------------------------------------------------
def test_component_shapes_noise_without_extra_network_calls():
    sde = VESDE(0.01, 10.0, 100)
    score = GaussianScore(MEAN, LAM.float(), sde)
    stats = gaussian_statistics(LAM, MEAN)
    plain = DPMSolverPP2MSDE(steps=5)
    shaped = plain.replace(pds=PDS(filters="freq", alpha=2.0))
    a, b = (generate(s, score, sde, [0, 1], (1, H, W), statistics=stats) for s in (plain, shaped))
    assert a.nfe == b.nfe == shaped.nfe(sde) == 5
    assert not torch.allclose(a.x, b.x)
    with_corrector = shaped.replace(corrector=Langevin())
    assert generate(with_corrector, score, sde, [0], (1, H, W), statistics=stats).nfe == 9 == with_corrector.nfe(sde)


@pytest.mark.parametrize("make, message", [
    (lambda: DPMSolverPP2MSDE(pds=PDS()), "PDS filters 'both' cannot shape the noise of DPMSolverPP2MSDE"),
    (lambda: DPMSolverPP2MSDE(pds=PDS(filters="freq"), eta=0.0), "eta 0 injects no noise for PDS to shape"),
    (lambda: EDMStochastic(pds=PDS(filters="freq"), S_churn=10.0), "its churn must add isotropic noise"),
    (lambda: Restart(pds=PDS(filters="freq")), "its restart jump must add isotropic noise"),
])
def test_component_refuses(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_engine_refuses_both_filters_before_sampling():
    both = Preconditioner(freq_filter=torch.ones(1, H, W), space_filter=torch.ones(1, H, W))
    calls = []
    score = lambda x, t: calls.append(1) or x
    with pytest.raises(ValueError, match="with both PDS filters M M\\^T = C S\\^2 C is diagonal in none"):
        dpmpp_2m_sde(score, VESDE(), (1, 1, H, W), noise=impulses(1), preconditioner=both, n_steps=3)
    assert not calls
