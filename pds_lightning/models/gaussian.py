"""Exact score of a stationary Gaussian image model: samplers measured without training.

Target: x0 ~ N(mean, C) per channel with C circulant, C = F^-1 diag(lam) F, i.e. lam(k) =
E|fft2(x0 - mean)(k)|^2 / (H W) (lam.mean() is the per-pixel variance). Under an SDE with marginal
x_t = a_t x0 + s_t z the covariance stays diagonal in Fourier, with eigenvalues a_t^2 lam + s_t^2, so
score(x, t) = -F^-1[ F(x - a_t mean) / (a_t^2 lam + s_t^2) ] exactly, for VE, VP and sub-VP alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pds_lightning.models.layers import check_class_labels
from pds_lightning.preconditioner import frequency_mirror
from pds_lightning.sde import SDE, per_sample


def power_law_spectrum(height: int, width: int, variance: float = 0.05, exponent: float = 2.0,
                       f0: float | None = None, channels: int = 1) -> Tensor:
    """lam(f) = 1 / (|f|^2 + f0^2)^(exponent/2) on fftfreq grids, scaled to mean `variance`, [C, H, W].

    f0 defaults to 1/height (the parity fixture's 1/16 at 16 px); exponent 2 is the 1/f^2 spectrum of
    natural images.
    """
    f0 = 1.0 / height if f0 is None else f0
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    lam = 1.0 / (fx ** 2 + fy ** 2 + f0 ** 2) ** (exponent / 2)
    return (lam * variance / lam.mean()).expand(channels, height, width).clone()


class GaussianScore(nn.Module):
    """score_fn(x, t) of N(mean, F^-1 diag(lam) F) diffused by `sde`; also draws exact target samples."""

    def __init__(self, mean: Tensor | float, power_spectrum: Tensor, sde: SDE):
        super().__init__()
        lam = torch.as_tensor(power_spectrum)
        if lam.dim() == 2:
            lam = lam[None]
        if lam.dim() != 3:
            raise ValueError(f"power_spectrum must be [H, W] or [C, H, W], got {tuple(lam.shape)}")
        if not torch.isfinite(lam).all() or (lam <= 0).any():
            raise ValueError("power_spectrum must be finite and positive everywhere")
        if not torch.allclose(lam, frequency_mirror(lam), rtol=1e-6, atol=0):
            raise ValueError("power_spectrum must satisfy lam(k) = lam(-k) (a real stationary image model), "
                             "stored unshifted with DC at [0, 0]")
        self.sde = sde
        self.register_buffer("lam", lam)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=lam.dtype))

    def _half(self, v: Tensor, like: Tensor) -> Tensor:
        """v[..., :W//2+1] on like's device and precision (rfft2 layout)."""
        return v[..., : like.shape[-1] // 2 + 1].to(device=like.device, dtype=like.dtype)

    def scales(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(a_t, s_t) of the marginal x_t = a_t x0 + s_t z, each [B]."""
        ones = torch.ones(t.shape[0], 1, 1, 1, device=like.device, dtype=like.dtype)
        a, s = self.sde.marginal_prob(ones, t)
        return a.flatten(), s.to(like.dtype)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        a, s = self.scales(t, x)
        lam = self._half(self.lam, x)
        centred = x - per_sample(a) * self.mean.to(device=x.device, dtype=x.dtype)
        eig = per_sample(a ** 2) * lam + per_sample(s ** 2)
        return -torch.fft.irfft2(torch.fft.rfft2(centred) / eig, s=x.shape[-2:])

    def marginal_eigenvalues(self, t: float) -> Tensor:
        """Eigenvalues a_t^2 lam + s_t^2 of the covariance of x_t (diagonal in Fourier)."""
        a, s = self.scales(torch.tensor([float(t)], dtype=self.lam.dtype), self.lam)
        return a[0] ** 2 * self.lam + s[0] ** 2

    def log_prob(self, x: Tensor, t: float) -> Tensor:
        """Exact log-density of x under the marginal p_t (x_t's Gaussian), per sample [B], in float64."""
        a, _ = self.scales(torch.tensor([float(t)], dtype=torch.float64), self.lam.double())
        eig = self.marginal_eigenvalues(t).double().to(x.device)
        centred = x.double() - a[0] * self.mean.double().to(x.device)
        power = torch.fft.fft2(centred, norm="ortho").abs().square()  # unitary DFT: ||x||^2 preserved
        quad = (power / eig).flatten(1).sum(1)
        return -0.5 * (quad + torch.log(2 * torch.pi * eig).sum())

    def sample(self, n: int, generator: torch.Generator | None = None, channels: int | None = None) -> Tensor:
        """n exact draws of the target x0 = mean + F^-1 sqrt(lam) F z, [n, C, H, W] in lam's precision."""
        C = channels if channels is not None else self.lam.shape[0]
        H, W = self.lam.shape[-2:]
        z = torch.randn(n, C, H, W, generator=generator, dtype=self.lam.dtype, device=self.lam.device)
        return self.mean + torch.fft.irfft2(torch.fft.rfft2(z) * self._half(self.lam.sqrt(), z), s=(H, W))


class GaussianMixtureScore(nn.Module):
    """Exact class-conditional scores of a mixture with one isotropic Gaussian per class, diffused by `sde`.

    Class k: x0 ~ N(means[k], variance I), prior weight weights[k]. At time t, x_t | k ~ N(a_t means[k], v_t I)
    with v_t = a_t^2 variance + s_t^2, so score_k = -(x - a_t means[k]) / v_t; the unconditional score (the
    null class, index K, or class_labels None) is the posterior-weighted sum sum_k p_t(k | x) score_k.
    """

    def __init__(self, means: Tensor, variance: float, sde: SDE, weights: Tensor | None = None):
        super().__init__()
        means = torch.as_tensor(means)
        if means.dim() != 4:
            raise ValueError(f"means must be [K, C, H, W] (one mean image per class), got {tuple(means.shape)}")
        weights = torch.full((means.shape[0],), 1.0 / means.shape[0]) if weights is None else torch.as_tensor(weights)
        if weights.shape != (means.shape[0],) or (weights <= 0).any():
            raise ValueError(f"weights must be {means.shape[0]} positive numbers, got {weights}")
        if not variance > 0:
            raise ValueError(f"variance must be > 0, got {variance}")
        self.sde, self.variance, self.num_classes = sde, float(variance), int(means.shape[0])
        self.register_buffer("means", means)
        self.register_buffer("log_weights", (weights / weights.sum()).log().to(means.dtype))

    def class_scores(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(score_k(x) [B, K, C, H, W], log p_t(k | x) [B, K])."""
        ones = torch.ones(t.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype)
        a, s = self.sde.marginal_prob(ones, t)
        a, v = a.flatten(), (a ** 2 * self.variance + s.to(x.dtype).reshape(-1, 1, 1, 1) ** 2).flatten()
        diff = x[:, None] - a.reshape(-1, 1, 1, 1, 1) * self.means.to(device=x.device, dtype=x.dtype)[None]
        scores = -diff / v.reshape(-1, 1, 1, 1, 1)
        logits = self.log_weights.to(device=x.device, dtype=x.dtype) - 0.5 * diff.square().flatten(2).sum(2) / v[:, None]
        return scores, torch.log_softmax(logits, dim=1)

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        scores, log_post = self.class_scores(x, t)
        unconditional = (log_post.exp()[..., None, None, None] * scores).sum(1)
        if class_labels is None:
            return unconditional
        labels = check_class_labels(class_labels, self.num_classes, x.shape[0]).to(x.device)
        null = labels == self.num_classes
        conditional = scores[torch.arange(x.shape[0], device=x.device), labels.clamp(max=self.num_classes - 1)]
        return torch.where(null.reshape(-1, 1, 1, 1), unconditional, conditional)

    def sample(self, class_labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws x0 of the given classes [B] (null class not allowed), in the means' precision."""
        labels = check_class_labels(class_labels, self.num_classes, len(class_labels))
        if (labels == self.num_classes).any():
            raise ValueError("sample draws from the classes 0..K-1; the null class has no single Gaussian")
        mean = self.means[labels]
        return mean + self.variance ** 0.5 * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
