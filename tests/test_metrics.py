"""Metrics against analytic values: radial spectra of known images, spectral error, Frechet distance, FID/KID."""

import math

import pytest
import torch
from torch import nn

from pds_lightning.metrics import (FeatureMetrics, TorchScriptFeatures, feature_moments, frechet_distance,
                                   log_spectral_distance, make_feature_extractor, metric_name, radial_bins,
                                   radial_power_spectrum, spectral_error)
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sde import VESDE
from helpers import TinyFeatures


def bin_counts(h, w):
    """Coefficients per integer-radius bin, counted by hand (round half up of sqrt(ky^2 + kx^2))."""
    counts = {}
    for i in range(h):
        for j in range(w):
            ky = i if i < (h + 1) // 2 else i - h
            kx = j if j < (w + 1) // 2 else j - w
            b = math.floor(math.sqrt(ky * ky + kx * kx) + 0.5)
            counts[b] = counts.get(b, 0) + 1
    return counts


@pytest.mark.parametrize("h,w", [(16, 16), (8, 12)])
def test_radial_bins_match_a_hand_count(h, w):
    counts = bin_counts(h, w)
    got = torch.bincount(radial_bins(h, w).reshape(-1))
    assert got.tolist() == [counts[b] for b in range(len(counts))]


def test_radial_spectrum_of_a_constant_image_is_all_dc():
    x = torch.full((1, 16, 16), 0.3, dtype=torch.float64)
    power = torch.fft.fft2(x).abs() ** 2
    radial = radial_power_spectrum(power)
    assert radial.shape == (1, 12)
    assert radial[0, 0].item() == pytest.approx((256 * 0.3) ** 2, rel=1e-12)
    assert radial[0, 1:].abs().max().item() < 1e-9


def test_radial_spectrum_of_a_cosine_sits_in_its_frequency_bin():
    k, h, w = 3, 16, 16
    col = torch.arange(w, dtype=torch.float64)
    x = torch.cos(2 * math.pi * k * col / w).expand(h, w)
    power = torch.fft.fft2(x).abs() ** 2
    radial = radial_power_spectrum(power)
    # fft2 puts H W / 2 at (0, +k) and (0, -k): two coefficients of radius k.
    expected = 2 * (h * w / 2) ** 2 / bin_counts(h, w)[k]
    assert radial[k].item() == pytest.approx(expected, rel=1e-12)
    assert torch.cat([radial[:k], radial[k + 1:]]).abs().max().item() < 1e-8


def test_radial_spectrum_rejects_a_vector():
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
        radial_power_spectrum(torch.ones(5))


def test_spectral_error_in_decades():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=g) * 0.5
    power = torch.fft.fft2(x.double()).abs().square().mean(0)
    assert spectral_error(x, power) == pytest.approx(0.0, abs=1e-12)
    # Images twice as bright have 4x the power at every frequency: log10(4) decades everywhere.
    assert spectral_error(2 * x, power) == pytest.approx(math.log10(4.0), rel=1e-9)
    assert log_spectral_distance(power * 10, power) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="image_size"):
        spectral_error(x, power[:, :8, :8])


def gaussian_target(channels=3, size=16, mean=0.5, variance=0.004):
    lam = power_law_spectrum(size, size, variance=variance, channels=channels)
    return GaussianScore(mean, lam, VESDE(num_scales=10)), lam


def test_spectral_error_of_exact_gaussian_samples_is_near_zero_and_of_noise_large():
    model, lam = gaussian_target()
    h = w = 16
    # Analytic E|fft2(x0)|^2 = H W lam + |fft2(mean)|^2, the mean term sitting at DC only.
    reference = h * w * lam.clone()
    reference[:, 0, 0] += (h * w * 0.5) ** 2
    x = model.sample(512, generator=torch.Generator().manual_seed(1)).float()
    assert 0.0 <= x.min() and x.max() <= 1.0  # the test's model stays inside [0, 1] without clamping
    err_exact = spectral_error(x, reference)
    noise = torch.rand(512, 3, h, w, generator=torch.Generator().manual_seed(2))
    err_noise = spectral_error(noise, reference)
    assert err_exact < 0.03
    assert err_noise > 0.5


def test_frechet_distance_of_diagonal_gaussians_is_analytic():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 4.0, 1.0])
    expected = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(float(expected), rel=1e-12)


def test_frechet_distance_matches_torchmetrics_formula_on_full_covariances():
    from torchmetrics.image.fid import _compute_fid

    g = torch.Generator().manual_seed(3)
    f1 = torch.randn(200, 6, generator=g, dtype=torch.float64)
    f2 = torch.randn(200, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    m1, s1 = feature_moments(f1)
    m2, s2 = feature_moments(f2)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(float(_compute_fid(m1, s1, m2, s2)), rel=1e-8)
    assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    features = make_feature_extractor(TinyFeatures(dim=8))
    g = torch.Generator().manual_seed(4)
    real = torch.rand(64, 3, 8, 8, generator=g) * 0.8
    metrics = FeatureMetrics(features, (3, 8, 8), kid_subset_size=32, kid_subsets=20)
    metrics.update(real, real=True)
    metrics.update(real, real=False)
    same = metrics.compute()
    metrics.reset()
    metrics.update((real + 0.2).clamp(0, 1), real=False)
    shifted = metrics.compute()
    assert abs(same["fid"]) < 1e-3
    assert shifted["fid"] > 100 * max(abs(same["fid"]), 1e-5) and shifted["fid"] > 1e-2
    assert shifted["kid"] > abs(same["kid"]) + 1e-3
    # The torchmetrics FID equals the Frechet distance of the extractor's own feature moments.
    with torch.no_grad():
        fr, ff = features(real), features((real + 0.2).clamp(0, 1))
    assert shifted["fid"] == pytest.approx(frechet_distance(*feature_moments(fr), *feature_moments(ff)), rel=1e-4)


def test_torchscript_inception_file_is_called_with_0_255_images(tmp_path):
    class Scripted(nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.mean(dim=(2, 3)) if return_features else x.sum()

    path = tmp_path / "inception.pt"
    torch.jit.script(Scripted()).save(str(path))
    x = torch.rand(2, 3, 4, 4)
    feats = TorchScriptFeatures(path)(x)
    assert torch.allclose(feats, (x * 255).mean(dim=(2, 3)))
    grey = TorchScriptFeatures(path)(x[:, :1])
    assert grey.shape == (2, 3)

    pickled = tmp_path / "not_script.pt"
    torch.save({"w": torch.ones(1)}, pickled)
    with pytest.raises(ValueError, match="not a TorchScript"):
        TorchScriptFeatures(pickled)
    with pytest.raises(FileNotFoundError, match="not found"):
        TorchScriptFeatures(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not both"):
        make_feature_extractor(TinyFeatures(dim=8), path)


def test_metric_names_carry_the_sample_count():
    assert metric_name("fid", 1000, "pds_66") == "val/fid@1k/pds_66"
    assert metric_name("kid", 50000, "vanilla", stage="predict") == "predict/kid@50k/vanilla"
    assert metric_name("fid", 64, "x") == "val/fid@64/x"
