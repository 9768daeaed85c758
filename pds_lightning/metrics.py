"""Sample-quality metrics: the radially averaged power spectrum, a spectral error, FID and KID.

The spectral error is where PDS acts (it rescales the sampler's step per frequency), needs no extra
weights and is always available. FID / KID go through torchmetrics with any feature-extractor module;
a TorchScript Inception file (e.g. the one of the StyleGAN/ADM evaluation suites) can be wrapped with
`TorchScriptFeatures`, and the standard Inception of torchmetrics / torch-fidelity is `standard_inception`.
Feature extractors receive float images `[B, C, H, W]` with values in [0, 1].

FID as papers report it compares against precomputed reference statistics: `FIDStatistics` reads and
writes the `.npz` layout of the EDM (`fid.py ref`) and ADM (`evaluations/evaluator.py`) suites, arrays
`mu` [2048] and `sigma` [2048, 2048] (float64) of the Inception pool features.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pds_lightning.distributed import is_distributed
from pds_lightning.fileio import atomic_path
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


# ---- FID reference statistics ---------------------------------------------------------------------------
#: Keys of the EDM / ADM reference `.npz` files: mean and covariance of the Inception pool features.
FID_STATS_KEYS = ("mu", "sigma")
#: Optional key this project adds: how many images the statistics were computed from.
FID_COUNT_KEY = "num_images"
#: Below this many samples FID is visibly biased upwards; papers report FID over 50k samples.
FID_MIN_SAMPLES = 10_000
FID_PAPER_SAMPLES = 50_000


def fid_sample_warning(num_samples: int) -> str | None:
    """The warning to show beside an FID over `num_samples` samples, or None when there are enough."""
    if num_samples >= FID_MIN_SAMPLES:
        return None
    return (f"FID over {num_samples} samples (< {FID_MIN_SAMPLES}) is biased upwards and not comparable with "
            f"published values, which use {FID_PAPER_SAMPLES}")


@dataclass
class FIDStatistics:
    """Mean `mu [D]` and unbiased covariance `sigma [D, D]` (float64) of the features of `count` images."""

    mu: torch.Tensor
    sigma: torch.Tensor
    count: int | None = None

    def __post_init__(self):
        self.mu, self.sigma = torch.as_tensor(self.mu).double(), torch.as_tensor(self.sigma).double()
        d = self.mu.shape[0] if self.mu.dim() == 1 else -1
        if self.mu.dim() != 1 or tuple(self.sigma.shape) != (d, d):
            raise ValueError(f"FID statistics need mu [D] and sigma [D, D], got {list(self.mu.shape)} and "
                             f"{list(self.sigma.shape)}")

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @classmethod
    def from_features(cls, features: torch.Tensor) -> "FIDStatistics":
        mu, sigma = feature_moments(features)
        return cls(mu, sigma, int(features.shape[0]))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FIDStatistics":
        """Read an EDM / ADM reference `.npz` (keys 'mu' and 'sigma'; ADM's extra arrays are ignored)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"FID reference statistics {path} not found; write them with "
                                    "`pds-lightning evaluate --write-reference-stats FILE --reference SOURCE`")
        try:
            npz = np.load(os.fspath(path), allow_pickle=False)
        except (OSError, EOFError, ValueError) as err:  # not a zip, truncated, or a pickle (never unpickled)
            raise ValueError(f"{path} is not an .npz of FID reference statistics: {err}") from err
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} is not an .npz of FID reference statistics (a single array)")
        with npz:
            missing = [k for k in FID_STATS_KEYS if k not in npz.files]
            if missing:
                raise ValueError(f"{path} has no {missing} array(s) (found {sorted(npz.files)}); FID reference "
                                 "statistics are an .npz with 'mu' [D] and 'sigma' [D, D] (EDM / ADM layout)")
            count = int(npz[FID_COUNT_KEY]) if FID_COUNT_KEY in npz.files else None
            return cls(torch.from_numpy(npz["mu"].astype(np.float64)),
                       torch.from_numpy(npz["sigma"].astype(np.float64)), count)

    def save(self, path: str | os.PathLike) -> None:
        """Write the EDM / ADM layout ('mu', 'sigma' as float64, plus 'num_images'), atomically."""
        arrays = {"mu": self.mu.cpu().numpy(), "sigma": self.sigma.cpu().numpy()}
        if self.count is not None:
            arrays[FID_COUNT_KEY] = np.asarray(self.count, dtype=np.int64)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


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


#: torch-fidelity's file name for the standard FID Inception weights (torchmetrics' default extractor).
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_HELP = ("install torch-fidelity (pip install 'torchmetrics[image]') and run once with internet so the "
                  "standard Inception weights are cached, or pass --inception-weights FILE (the TorchScript "
                  "pt_inception-2015-12-05 file of the EDM / StyleGAN suites)")


class InceptionUnavailableError(RuntimeError):
    """Neither the standard Inception nor a local TorchScript file is available; the message says which to get."""


class StandardInception(nn.Module):
    """torchmetrics' FID Inception v3 (torch-fidelity's port of the TF graph), 2048-d pool features.

    Takes float images in [0, 1] (gray is repeated to RGB) and feeds it the uint8 pixels it was defined on;
    the network resizes to 299 px itself.
    """

    def __init__(self, weights_path: str | os.PathLike):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights_path))
        self.num_features = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        pixels = (x.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        return self.net(pixels).reshape(x.shape[0], -1)


def inception_weights_path() -> Path:
    """Where torch.hub caches the standard Inception weights (what torchmetrics downloads)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_NAME


def standard_inception(download: bool = True, timeout_s: float = 30.0) -> StandardInception:
    """The standard FID Inception: cached weights, else (with `download`) fetched once from torch-fidelity's
    release; `InceptionUnavailableError` in one line when torch-fidelity is missing or the download fails."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    except ImportError:
        raise InceptionUnavailableError(f"FID needs Inception features and torch-fidelity is not installed: "
                                        f"{INCEPTION_HELP}") from None
    path = inception_weights_path()
    if not path.is_file():
        if not download:
            raise InceptionUnavailableError(f"the standard Inception weights are not cached at {path}: {INCEPTION_HELP}")
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)  # an offline machine fails in seconds instead of hanging
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=False)
        except Exception as err:
            raise InceptionUnavailableError(f"could not download the standard Inception weights ({type(err).__name__}: "
                                            f"{str(err).splitlines()[0] if str(err) else ''}): {INCEPTION_HELP}") from None
        finally:
            socket.setdefaulttimeout(previous)
    return StandardInception(path)


#: `standard` values of make_feature_extractor: when the standard Inception is the default extractor.
STANDARD_INCEPTION_USE = ("never", "if_cached", "required")


def make_feature_extractor(feature_extractor: nn.Module | None = None,
                           inception_weights: str | os.PathLike | None = None,
                           standard: str = "never") -> nn.Module | None:
    """The configured feature extractor (at most one of the two), frozen and in eval mode, or None.

    With neither configured, `standard` decides: 'never' gives None, 'if_cached' the standard Inception
    when its weights are on disk (else None, no network), 'required' the standard Inception (downloaded
    once if need be) or `InceptionUnavailableError`.
    """
    if standard not in STANDARD_INCEPTION_USE:
        raise ValueError(f"standard must be one of {STANDARD_INCEPTION_USE}, got {standard!r}")
    if feature_extractor is not None and inception_weights is not None:
        raise ValueError("give either a feature extractor module or an Inception weights file, not both")
    if inception_weights is not None:
        feature_extractor = TorchScriptFeatures(inception_weights)
    if feature_extractor is None and standard != "never":
        try:
            feature_extractor = standard_inception(download=standard == "required")
        except InceptionUnavailableError:
            if standard == "required":
                raise
    if feature_extractor is None:
        return None
    return feature_extractor.eval().requires_grad_(False)


class FeatureMetrics(nn.Module):
    """FID and KID of generated images against reference images, over one feature extractor.

    Reference features are kept across `reset()` (they are computed once); `update` may be called on
    every rank with that rank's share of images: `compute()` sums the torchmetrics states over ranks.
    The reference may instead be precomputed `FIDStatistics` (`set_reference_statistics`): then only FID.
    """

    def __init__(self, feature_extractor: nn.Module, image_shape: tuple[int, int, int],
                 kid_subsets: int = 100, kid_subset_size: int = 1000, kid: bool = True):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        # normalize=True only tells torchmetrics to probe a custom extractor with float images in [0, 1].
        self.fid = FrechetInceptionDistance(feature=feature_extractor, reset_real_features=False,
                                            normalize=True, input_img_size=tuple(image_shape))
        self.kid = KernelInceptionDistance(feature=feature_extractor, reset_real_features=False,
                                           normalize=True, subsets=kid_subsets, subset_size=kid_subset_size)
        self.kid_subset_size = kid_subset_size
        self.with_kid = kid

    @property
    def num_reference(self) -> int:
        return int(self.fid.real_features_num_samples)

    @property
    def feature_dim(self) -> int:
        return int(self.fid.real_features_sum.shape[0])

    @torch.no_grad()
    def set_reference_statistics(self, stats: FIDStatistics, rank: int = 0) -> None:
        """Use precomputed reference statistics (KID is then off: it needs the reference features).

        The torchmetrics sums are set so that they give `stats` exactly; only rank 0 holds them, so the
        sum over ranks is `stats` too.
        """
        if stats.dim != self.feature_dim:
            raise ValueError(f"the FID reference statistics are {stats.dim}-d but the feature extractor gives "
                             f"{self.feature_dim}-d features; use statistics of the same extractor (Inception: 2048)")
        if stats.count is not None and stats.count < 2:
            raise ValueError(f"FID reference statistics from {stats.count} image(s); they need at least 2")
        n = stats.count or 2  # EDM / ADM files carry no count; any n reproduces mu and sigma exactly
        fid = self.fid
        device = fid.real_features_sum.device
        mu, sigma = stats.mu.to(device), stats.sigma.to(device)
        keep = 1.0 if rank == 0 else 0.0
        fid.real_features_sum.copy_(keep * n * mu)
        fid.real_features_cov_sum.copy_(keep * ((n - 1) * sigma + n * torch.outer(mu, mu)))
        fid.real_features_num_samples.fill_(n if rank == 0 else 0)
        self.with_kid = False

    def reference_statistics(self) -> FIDStatistics:
        """This process's reference statistics, as accumulated by `update(..., real=True)`."""
        fid = self.fid
        n = int(fid.real_features_num_samples)
        if n < 2:
            raise ValueError(f"reference statistics need at least 2 images, got {n}")
        mu = fid.real_features_sum / n
        sigma = (fid.real_features_cov_sum - n * torch.outer(mu, mu)) / (n - 1)
        return FIDStatistics(mu, sigma, n)

    @torch.no_grad()
    def update(self, images: torch.Tensor, real: bool) -> None:
        if images.shape[0] == 0:
            return
        self.fid.update(images.float(), real=real)
        if self.with_kid:
            self.kid.update(images.float(), real=real)

    @torch.no_grad()
    def compute(self, seed: int = 0) -> dict[str, float]:
        """{'fid', 'kid'} ('kid' only without reference statistics); KID uses subsets of min(subset_size, N)
        drawn from a fixed seed.

        The global RNG is forked, so computing a metric never changes training randomness.
        """
        if not hasattr(self.fid, "orig_dtype"):
            self.fid.orig_dtype = torch.float32
        out = {"fid": float(self.fid.compute())}
        if not self.with_kid:
            return out
        # A rank may hold no images of a kind (fewer images than ranks): give it empty states to sync.
        dim = self.fid.real_features_sum.shape[0]
        for state in (self.kid.real_features, self.kid.fake_features):
            if not state:
                state.append(self.fid.real_features_sum.new_zeros(0, dim).float())
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
    "FID_MIN_SAMPLES", "FID_STATS_KEYS", "FIDStatistics", "FeatureMetrics", "InceptionUnavailableError",
    "StandardInception", "TorchScriptFeatures", "feature_moments", "fid_sample_warning", "frechet_distance",
    "inception_weights_path", "log_spectral_distance", "make_feature_extractor", "metric_name", "radial_bins",
    "radial_power_spectrum", "spectral_error", "standard_inception",
]
