"""The PDS preconditioner M = F^-1 diag(R) F diag(S) (docs/concepts/pds.md).

`noise(z) = M z` shapes the injected noise, `drift(g) = M M^T g` shapes scores and drifts. R (frequency
filter, unshifted: DC at [0, 0]) and S (space filter) are real [C, H, W] float32 buffers; a missing
filter is the identity. Because R(k) = R(-k), the circulant F^-1 R F is real and symmetric, so real FFTs
(rfft2/irfft2) give the official complex-FFT operator at about half the cost.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor, nn

from pds_lightning.fileio import atomic_path


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 1:
        raise ValueError(f"preconditioner strength alpha must be a finite number > 1 (official default 5; "
                         f"alpha -> infinity is vanilla sampling), got {alpha!r}")
    return float(alpha)


def _check_image_tensor(x: Tensor, what: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() != 3:
        raise ValueError(f"{what} must have shape [C, H, W] of the images, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains non-finite values (nan/inf); recompute it from the data")
    return x


def filter_from_statistic(m: Tensor, alpha: float) -> Tensor:
    """Official normalisation alpha / (m / max(m) + alpha - 1) as float32; values in [1, alpha/(alpha-1)].

    The max is taken over the whole tensor (all channels), as the official code does.
    """
    alpha = _check_alpha(alpha)
    m = _check_image_tensor(m, "statistic").to(torch.float64)
    if (m < 0).any():
        raise ValueError(f"statistic has negative values (min {m.min().item():.3g}); raw statistics are "
                         "log1p(mean |fft2(x)|^2) or mean x^2 and cannot be negative")
    peak = m.max()
    if peak <= 0:
        raise ValueError("statistic is zero everywhere (non-positive max); it cannot be normalised. "
                         "Were the statistics computed from an empty or all-black data set?")
    return (alpha / (m / peak + alpha - 1)).to(torch.float32)


def _check_dc_peak(freq_stat: Tensor) -> None:
    """The DC coefficient of images in [0, 1] carries the most power; elsewhere means fft-shifted data."""
    peak = freq_stat.flatten(1).max(dim=1).values
    if (freq_stat[:, 0, 0] < peak * (1 - 1e-6)).any():
        raise ValueError("frequency statistic is not largest at the DC coefficient [0, 0]; it looks "
                         "fft-shifted. Store it unshifted (apply torch.fft.ifftshift over H, W).")


def _check_mirror_symmetric(f: Tensor, rtol: float, problem: str) -> None:
    """ValueError(`problem`) unless f(-k) = f(k): statistics of real images, stored unshifted."""
    if not torch.allclose(f, frequency_mirror(f), rtol=rtol, atol=0):
        raise ValueError(problem)


def _check_shape(shape: tuple[int, int, int], x: Tensor, what: str, fix: str) -> None:
    """ValueError unless the images x [..., C, H, W] have the [C, H, W] `shape` of `what`."""
    if tuple(x.shape[-3:]) != shape:
        raise ValueError(f"{what} are [C, H, W] = {shape} but the images are {tuple(x.shape)}; {fix}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The input's precision, at least float32 (half precision has no CPU FFT)."""
    return torch.promote_types(x.dtype, torch.float32)


def frequency_mirror(f: Tensor) -> Tensor:
    """f(-k) of an unshifted DFT-layout array (DC at [0, 0]): index (-i mod H, -j mod W)."""
    return torch.roll(torch.flip(f, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))


class Preconditioner(nn.Module):
    """M = F^-1 diag(R) F diag(S) per channel; `noise` applies M, `drift` applies M M^T."""

    def __init__(self, freq_filter: Tensor | None = None, space_filter: Tensor | None = None):
        super().__init__()
        if freq_filter is not None:
            freq_filter = self._checked_filter(freq_filter, "frequency filter")
            _check_mirror_symmetric(freq_filter, 1e-5, (
                "frequency filter is not symmetric under k -> -k (R[c, -i, -j] != R[c, i, j]); it must come from "
                "|fft2|^2 statistics stored unshifted (DC at [0, 0]). A filter saved fft-shifted (odd sizes) shows "
                "this; apply torch.fft.ifftshift."))
        if space_filter is not None:
            space_filter = self._checked_filter(space_filter, "space filter")
        if freq_filter is not None and space_filter is not None and freq_filter.shape != space_filter.shape:
            raise ValueError(f"frequency filter {tuple(freq_filter.shape)} and space filter "
                             f"{tuple(space_filter.shape)} must have the same [C, H, W] shape")
        self.register_buffer("freq_filter", freq_filter)
        self.register_buffer("space_filter", space_filter)

    @staticmethod
    def _checked_filter(f: Tensor, what: str) -> Tensor:
        f = _check_image_tensor(f, what)
        if (f <= 0).any():
            raise ValueError(f"{what} must be positive everywhere (min {f.min().item():.3g})")
        # float32 always: a float64 filter would silently promote every FFT to double precision.
        return f.detach().to(torch.float32).clone()

    @classmethod
    def from_statistics(cls, freq_stat: Tensor | None = None, space_stat: Tensor | None = None,
                        alpha: float = 5.0) -> "Preconditioner":
        """Filters from the official raw statistics (log1p power spectrum; mean x^2) with strength alpha."""
        _check_alpha(alpha)
        freq = space = None
        if freq_stat is not None:
            freq_stat = _check_image_tensor(freq_stat, "frequency statistic")
            _check_dc_peak(freq_stat)
            freq = filter_from_statistic(freq_stat, alpha)
        if space_stat is not None:
            space = filter_from_statistic(space_stat, alpha)
        return cls(freq, space)

    @property
    def is_identity(self) -> bool:
        return self.freq_filter is None and self.space_filter is None

    @property
    def shape(self) -> tuple[int, int, int] | None:
        f = self.freq_filter if self.freq_filter is not None else self.space_filter
        return None if f is None else tuple(f.shape)

    def _check_input(self, x: Tensor) -> None:
        if self.shape is not None:
            _check_shape(self.shape, x, "preconditioner filters", "build the filters from statistics of images of "
                         "this size")

    def _circulant(self, x: Tensor) -> Tensor:
        """C x = F^-1 diag(R) F x for real x, via real FFTs (R Hermitian-symmetric); x when there is no R."""
        if self.freq_filter is None:
            return x
        H, W = x.shape[-2:]
        x = x.to(_compute_dtype(x))
        R = self.freq_filter[..., : W // 2 + 1].to(device=x.device, dtype=x.dtype)
        return torch.fft.irfft2(R * torch.fft.rfft2(x), s=(H, W))

    def _diagonal(self, x: Tensor, squared: bool) -> Tensor:
        """S x (or S^2 x when `squared`) in x's compute precision; x when there is no S."""
        if self.space_filter is None:
            return x
        S = self.space_filter.to(device=x.device, dtype=_compute_dtype(x))
        return x * (S ** 2 if squared else S)

    def noise(self, z: Tensor) -> Tensor:
        """M z = C S z: space filter first, then frequency filter."""
        if self.is_identity:
            return z
        self._check_input(z)
        return self._circulant(self._diagonal(z, squared=False)).to(z.dtype)

    def drift(self, g: Tensor) -> Tensor:
        """M M^T g = C S^2 C g with C = F^-1 diag(R) F."""
        if self.is_identity:
            return g
        self._check_input(g)
        return self._circulant(self._diagonal(self._circulant(g), squared=True)).to(g.dtype)

    def check_gram_diagonal(self) -> None:
        """ValueError unless M M^T is diagonal in one basis (not both filters), as `gram_apply` needs."""
        if self.freq_filter is not None and self.space_filter is not None:
            raise ValueError("f(M M^T) needs M M^T diagonal in one basis, but with both PDS filters M M^T = C S^2 C "
                             "is diagonal in none (no per-mode closed form); use PDS filters 'freq' or 'space'")

    def gram_apply(self, terms, sigma: float | None = None) -> Tensor:
        """sum_i f_i(B) x_i for B = M M^T, `terms` [(f_i, x_i)], where B is diagonal in one basis: R^2 in the
        real-FFT basis (frequency filter only), S^2 per pixel (space filter only), 1 without filters. B is the
        same at every noise level, so `sigma` (which UnresolvedBandsGram reads) changes nothing here.

        Each f_i maps B's eigenvalues (a float64 tensor broadcasting against that basis) to the factors applied
        there. With both filters B = C S^2 C is diagonal in no single basis, so f(B) has no closed form here.
        """
        x0 = terms[0][1]
        self.check_gram_diagonal()
        self._check_input(x0)
        if self.freq_filter is None:
            dtype = _compute_dtype(x0)
            S = self.space_filter if self.space_filter is not None else torch.ones(())
            b = S.to(device=x0.device, dtype=torch.float64) ** 2
            return sum(f(b).to(dtype) * x.to(dtype) for f, x in terms).to(x0.dtype)
        W = x0.shape[-1]
        return fourier_gram_apply(self.freq_filter[..., : W // 2 + 1].to(device=x0.device, dtype=torch.float64) ** 2,
                                  terms)


def fourier_gram_apply(b: Tensor, terms) -> Tensor:
    """sum_i f_i(B) x_i for B = F^-1 diag(b) F, b float64 per real-FFT coefficient [C, H, W // 2 + 1] (one rfft2
    per term, one irfft2)."""
    x0 = terms[0][1]
    dtype = _compute_dtype(x0)
    spectrum = sum(f(b).to(dtype) * torch.fft.rfft2(x.to(dtype)) for f, x in terms)
    return torch.fft.irfft2(spectrum, s=tuple(x0.shape[-2:])).to(x0.dtype)


def unresolved_gains(lam: Tensor, sigma: float, scale: float, sharpness: float) -> Tensor:
    """b_k(sigma) = scale / (1 + (lam_k / sigma^2)^sharpness): about `scale` on the Fourier modes whose data
    variance lam_k is still below sigma^2 (not yet resolved), about 0 on the resolved ones (as a logistic in
    log lam, so no power overflows)."""
    return scale * torch.sigmoid(sharpness * (2.0 * math.log(sigma) - lam.log()))


class UnresolvedBandsGram(nn.Module):
    """B(sigma) = F^-1 diag(b(sigma)) F with b = `unresolved_gains` of the data's mode variances `lam` [C, H, W]
    (model space): a frequency preconditioner that follows the noise level. Only f(B(sigma)) exists
    (`gram_apply`): it shapes the noise of a solver that integrates each mode exactly."""

    is_identity = False

    def __init__(self, lam: Tensor, scale: float, sharpness: float):
        super().__init__()
        lam = _check_image_tensor(lam, "mode variances").to(torch.float64)
        if (lam <= 0).any():
            raise ValueError(f"mode variances must be positive everywhere (min {lam.min().item():.3g})")
        _check_mirror_symmetric(lam, 1e-9, "mode variances are not symmetric under k -> -k; they must come from "
                                "|fft2|^2 statistics of real images stored unshifted (DC at [0, 0])")
        self.scale, self.sharpness = float(scale), float(sharpness)
        self.register_buffer("lam", lam.clone())

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.lam.shape)

    def check_gram_diagonal(self) -> None:
        """B(sigma) is diagonal in the real-FFT basis at every sigma: nothing to refuse."""

    def gains(self, sigma: float) -> Tensor:
        """b(sigma) per real-FFT coefficient, float64 [C, H, W // 2 + 1]."""
        return unresolved_gains(self.lam[..., : self.lam.shape[-1] // 2 + 1], sigma, self.scale, self.sharpness)

    def gram_apply(self, terms, sigma: float) -> Tensor:
        """sum_i f_i(B(sigma)) x_i (see Preconditioner.gram_apply)."""
        x0 = terms[0][1]
        _check_shape(self.shape, x0, "the mode variances", "build them from statistics of images of this size")
        return fourier_gram_apply(self.gains(sigma).to(x0.device), terms)


def read_statistic(path: str | os.PathLike) -> Tensor:
    """An official `.npy` raw statistic as a float32 tensor [C, H, W]."""
    arr = np.load(os.fspath(path), allow_pickle=False)
    return _check_image_tensor(torch.from_numpy(np.asarray(arr, dtype=np.float32)), f"statistic {path}")


def write_statistic(path: str | os.PathLike, statistic: Tensor) -> None:
    """Write a raw statistic [C, H, W] as float32 `.npy` (official format), atomically."""
    statistic = _check_image_tensor(torch.as_tensor(statistic), "statistic")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, statistic.detach().cpu().to(torch.float32).numpy())
