"""Sample-quality metrics: the radially averaged power spectrum, a spectral error, FID and KID.

The spectral error is where PDS acts (it rescales the sampler's step per frequency), needs no extra
weights and is always available. FID / KID go through torchmetrics with any feature-extractor module;
a TorchScript Inception file (e.g. the one of the StyleGAN/ADM evaluation suites) can be wrapped with
`TorchScriptFeatures`. Feature extractors receive float images `[B, C, H, W]` with values in [0, 1].
"""

from __future__ import annotations

import os

import torch
from torch import nn

from pds_lightning.distributed import is_distributed
from pds_lightning.statistics import ImageStatistics


# ---- spectra ------------------------------------------------------------------------------------------
def radial_bins(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer radius bin of each coefficient of an unshifted `fft2` of an `h x w` image, `[h, w]` long.

    The coefficient at [i, j] has integer frequencies (ky, kx) = (fftfreq(h) * h, fftfreq(w) * w), in
    cycles per image; its bin is round(sqrt(ky^2 + kx^2)) with halves rounded up. Bin 0 is the DC
    term alone; bins run to round(max radius) (the corners beyond Nyquist included) and none is empty.
    """
    ky = torch.fft.fftfreq(h, d=1.0 / h, device=device, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, d=1.0 / w, device=device, dtype=torch.float64)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return torch.floor(radius + 0.5).long()


def radial_power_spectrum(power: torch.Tensor) -> torch.Tensor:
    """Average `power [..., H, W]` (unshifted, DC at [0, 0]) over the bins of `radial_bins`: `[..., R]`."""
    if power.dim() < 2:
        raise ValueError(f"radial_power_spectrum needs power [..., H, W], got shape {list(power.shape)}")
    h, w = power.shape[-2:]
    bins = radial_bins(h, w, power.device).reshape(-1)
    n_bins = int(bins.max()) + 1
    flat = power.reshape(-1, h * w)
    sums = torch.zeros(flat.shape[0], n_bins, dtype=power.dtype, device=power.device)
    sums.index_add_(1, bins, flat)
    counts = torch.bincount(bins, minlength=n_bins).to(power.dtype)
    return (sums / counts).reshape(*power.shape[:-2], n_bins)


def log_spectral_distance(power_mean: torch.Tensor, reference_power_mean: torch.Tensor) -> float:
    """RMS over radii of log10 radial power ratios, averaged over channels (in decades).

    Both arguments are mean |fft2(x)|^2 `[C, H, W]` of images in [0, 1] (`ImageStatistics.power_mean`).
    A tiny floor (1e-12 of the reference's largest value) keeps an exactly-zero bin finite.
    """
    if power_mean.shape != reference_power_mean.shape or power_mean.dim() != 3:
        raise ValueError(
            f"spectral error compares power spectra [C, H, W] of equal shape, got {list(power_mean.shape)} "
            f"and reference {list(reference_power_mean.shape)}; sample at the data's image_size and channels")
    p = radial_power_spectrum(power_mean.double())
    q = radial_power_spectrum(reference_power_mean.double().to(p.device))
    floor = 1e-12 * float(q.max())
    diff = torch.log10(p.clamp_min(floor)) - torch.log10(q.clamp_min(floor))
    return float(diff.square().mean(-1).sqrt().mean())


def spectral_error(images: torch.Tensor, reference_power_mean: torch.Tensor) -> float:
    """Spectral error of `images [N, C, H, W]` in [0, 1] against the data's mean power spectrum `[C, H, W]`.

    The one definition used by the sampling callback, `evaluate` and the benchmarks: see
    `log_spectral_distance`. 0 means the samples carry the data's power at every spatial frequency.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"spectral_error needs a non-empty batch [N, C, H, W], got shape {list(images.shape)}")
    stats = ImageStatistics(images.shape[1:], device=images.device).update(images)
    return log_spectral_distance(stats.power_mean, reference_power_mean)


# ---- Frechet distance -----------------------------------------------------------------------------------
def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (eigh; negative round-off clipped)."""
    vals, vecs = torch.linalg.eigh((a + a.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians, in float64.

    tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2), a symmetric PSD form that eigh handles stably.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrtm_psd(sigma1)
    cross = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * cross)


def feature_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of features `[N, D]` (N >= 2), float64."""
    f = features.double()
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"feature moments need features [N >= 2, D], got shape {list(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


# ---- FID / KID through torchmetrics ----------------------------------------------------------------------
class TorchScriptFeatures(nn.Module):
    """Features of a TorchScript Inception file that takes images in [0, 255] and `return_features=True`.

    This is the calling convention of the `pt_inception-2015-12-05` file used by the StyleGAN / EDM
    evaluation code (it resizes to 299 px itself). Input here: float images in [0, 1].
    """

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Inception weights file {path} not found; download it or drop the option")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:  # a pickle or a truncated file: never unpickle, just report
            raise ValueError(f"{path} is not a TorchScript Inception file: {err}") from err

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:  # Inception expects RGB
            x = x.expand(-1, 3, -1, -1)
        return self.net(x.float() * 255.0, return_features=True)


def make_feature_extractor(feature_extractor: nn.Module | None = None,
                           inception_weights: str | os.PathLike | None = None) -> nn.Module | None:
    """The configured feature extractor (at most one of the two), frozen and in eval mode, or None."""
    if feature_extractor is not None and inception_weights is not None:
        raise ValueError("give either a feature extractor module or an Inception weights file, not both")
    if inception_weights is not None:
        feature_extractor = TorchScriptFeatures(inception_weights)
    if feature_extractor is None:
        return None
    return feature_extractor.eval().requires_grad_(False)


class FeatureMetrics(nn.Module):
    """FID and KID of generated images against reference images, over one feature extractor.

    Reference features are kept across `reset()` (they are computed once); `update` may be called on
    every rank with that rank's share of images: `compute()` sums the torchmetrics states over ranks.
    """

    def __init__(self, feature_extractor: nn.Module, image_shape: tuple[int, int, int],
                 kid_subsets: int = 100, kid_subset_size: int = 1000):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        # normalize=True only tells torchmetrics to probe a custom extractor with float images in [0, 1].
        self.fid = FrechetInceptionDistance(feature=feature_extractor, reset_real_features=False,
                                            normalize=True, input_img_size=tuple(image_shape))
        self.kid = KernelInceptionDistance(feature=feature_extractor, reset_real_features=False,
                                           normalize=True, subsets=kid_subsets, subset_size=kid_subset_size)
        self.kid_subset_size = kid_subset_size

    @property
    def num_reference(self) -> int:
        return int(self.fid.real_features_num_samples)

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        if images.shape[0] == 0:
            return
        self.fid.update(images.float(), real=real)
        self.kid.update(images.float(), real=real)

    @torch.no_grad()
    def compute(self, seed: int = 0) -> dict[str, float]:
        """{'fid', 'kid'}; KID uses subsets of min(subset_size, N) drawn from a fixed seed.

        The global RNG is forked, so computing a metric never changes training randomness.
        """
        # A rank may hold no images of a kind (fewer images than ranks): give it empty states to sync.
        dim = self.fid.real_features_sum.shape[0]
        for state in (self.kid.real_features, self.kid.fake_features):
            if not state:
                state.append(self.fid.real_features_sum.new_zeros(0, dim).float())
        if not hasattr(self.fid, "orig_dtype"):
            self.fid.orig_dtype = torch.float32
        out = {"fid": float(self.fid.compute())}
        n_fake = int(self.fid.fake_features_num_samples)
        n_real = int(self.fid.real_features_num_samples)
        if is_distributed():
            counts = torch.tensor([n_fake, n_real], device=self.fid.fake_features_sum.device)
            torch.distributed.all_reduce(counts)
            n_fake, n_real = (int(c) for c in counts)
        self.kid.subset_size = max(2, min(self.kid_subset_size, n_fake, n_real))
        devices = [self.fid.fake_features_sum.device] if self.fid.fake_features_sum.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out["kid"] = float(self.kid.compute()[0])
        return out

    def reset(self) -> None:
        """Forget generated images, keep the reference."""
        self.fid.reset()
        self.kid.reset()


def metric_name(kind: str, n: int, setting: str, stage: str = "val") -> str:
    """Logged name carrying the sample count: metric_name('fid', 1000, 'pds_66') == 'val/fid@1k/pds_66'."""
    count = f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)
    return f"{stage}/{kind}@{count}/{setting}"


__all__ = [
    "FeatureMetrics", "TorchScriptFeatures", "feature_moments", "frechet_distance", "log_spectral_distance",
    "make_feature_extractor", "metric_name", "radial_bins", "radial_power_spectrum", "spectral_error",
]
