import numpy as np
import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE


def test_power_law_spectrum_is_the_fixture_spectrum():
    lam = power_law_spectrum(16, 16, variance=0.05)
    f = torch.fft.fftfreq(16, dtype=torch.float64)
    raw = 1 / (f[:, None] ** 2 + f[None, :] ** 2 + (1 / 16) ** 2)
    torch.testing.assert_close(lam[0], raw * 0.05 / raw.mean())
    assert lam.shape == (1, 16, 16)


def test_ve_score_is_the_parity_fixture_formula():
    sde = VESDE()
    lam = power_law_spectrum(16, 16)
    score = GaussianScore(0.45, lam, sde)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    t = torch.tensor([0.9, 0.1], dtype=torch.float64)
    sigma = sde.sigma(t)[:, None, None, None]
    expected = -torch.fft.ifft2(torch.fft.fft2(x - 0.45) / (lam + sigma ** 2)).real
    torch.testing.assert_close(score(x, t), expected)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=["VE", "VP", "subVP"])
def test_score_is_minus_inverse_covariance_times_residual(sde):
    """Dense check: score = -(a^2 C + s^2 I)^-1 (x - a mean) with C the circulant covariance."""
    H, W = 4, 5
    lam = power_law_spectrum(H, W)[0].numpy()
    FH = np.exp(-2j * np.pi * np.outer(np.arange(H), np.arange(H)) / H)
    FW = np.exp(-2j * np.pi * np.outer(np.arange(W), np.arange(W)) / W)
    F = np.kron(FH, FW)
    C = np.real(np.conj(F).T @ np.diag(lam.reshape(-1)) @ F) / (H * W)
    mean = torch.rand(1, H, W, dtype=torch.float64)
    score = GaussianScore(mean, power_law_spectrum(H, W), sde)
    x = torch.randn(1, 1, H, W, dtype=torch.float64)
    t = torch.tensor([0.35], dtype=torch.float64)
    a, s = sde.marginal_prob(torch.ones(1, 1, 1, 1, dtype=torch.float64), t)
    a, s = a.item(), s.item()
    cov = a ** 2 * C + s ** 2 * np.eye(H * W)
    expected = -np.linalg.solve(cov, (x[0, 0] - a * mean[0]).reshape(-1).numpy())
    np.testing.assert_allclose(score(x, t).reshape(-1).numpy(), expected, rtol=1e-10, atol=1e-12)
    eig = score.marginal_eigenvalues(0.35)
    np.testing.assert_allclose(np.sort(eig.reshape(-1).numpy()), np.linalg.eigvalsh(cov), rtol=1e-10)


def test_exact_samples_have_the_target_moments():
    lam = power_law_spectrum(6, 6)
    score = GaussianScore(0.3, lam, VESDE())
    x = score.sample(4000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 1, 6, 6) and x.dtype == torch.float64
    assert abs(x.mean().item() - 0.3) < 5 * (lam[0, 0, 0].item() / (4000 * 36)) ** 0.5
    power = (torch.fft.rfft2(x - 0.3).abs() ** 2 / 36).mean(0)[0]
    ratio = power / lam[0, :, :4]
    assert (ratio - 1).abs().max() < 5 * 2 ** 0.5 / 4000 ** 0.5
    assert score.sample(2, channels=3).shape == (2, 3, 6, 6)


def test_invalid_spectra_are_refused():
    with pytest.raises(ValueError, match="positive"):
        GaussianScore(0.0, torch.zeros(4, 4), VESDE())
    with pytest.raises(ValueError, match="lam\\(k\\) = lam\\(-k\\)"):
        GaussianScore(0.0, torch.fft.fftshift(power_law_spectrum(5, 5), dim=(-2, -1)), VESDE())
    with pytest.raises(ValueError, match=r"\[H, W\] or \[C, H, W\]"):
        GaussianScore(0.0, torch.ones(5), VESDE())
