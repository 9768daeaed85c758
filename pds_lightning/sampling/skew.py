"""Skew-symmetric terms S of the preconditioned Langevin dynamics dx = (eps^2 / 2)(M M^T + S) grad log p dt + eps M dw.

Any constant skew-symmetric S keeps p stationary, since div(S grad p) = sum_ij S_ij d_i d_j p = 0 (proof, the
Gaussian rates and the step-size limit: docs/pds_stochastic.md). The Langevin corrector adds S score to its
drift M M^T score; S = 0 (no skew component) is the official method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pds_lightning.sampling.base import Component, check_number


class Skew(Component):
    """A constant skew-symmetric operator S on images [B, C, H, W]: `skew(g)` is S g."""

    def __call__(self, g: Tensor) -> Tensor:
        raise NotImplementedError


def paired_columns(width: int) -> tuple[list[int], list[int]]:
    """The real-FFT columns paired by PairedRotation: (1, 2), (3, 4), ... among the interior columns 1 <= kx <
    W / 2, whose coefficients are free complex numbers (columns 0 and W / 2 hold their own mirror images)."""
    interior = (width - 1) // 2
    if interior < 2:
        raise ValueError(f"PairedRotation pairs real-FFT columns 1 and 2, so images must be at least 5 pixels "
                         f"wide, got width {width}; leave skew out for such images")
    first = list(range(1, interior, 2))
    return first, [k + 1 for k in first]


class PairedRotation(Skew):
    """S = scale J, J the rotation between the real-FFT coefficients (ky, kx) and (ky, kx + 1) for kx = 1, 3, 5, ...
    (interior columns): frequencies of different radius, hence of different variance on natural images.
    In the unitary Fourier basis J X(k) = X(k + e_x), J X(k + e_x) = -X(k), and the mirrored coefficients
    follow, so J is real and J^T = -J. Cost: one rfft2 / irfft2 pair, as the frequency filter."""

    def __init__(self, scale: float = 0.5):
        check_number("PairedRotation", "scale", scale, low=0, low_open=True,
                     hint=" (no skew: leave the skew component out)")
        self.scale = float(scale)

    def __call__(self, g: Tensor) -> Tensor:
        H, W = g.shape[-2:]
        first, second = paired_columns(W)
        G = torch.fft.rfft2(g.to(torch.promote_types(g.dtype, torch.float32)))
        Y = torch.zeros_like(G)
        Y[..., first] = self.scale * G[..., second]
        Y[..., second] = -self.scale * G[..., first]
        return torch.fft.irfft2(Y, s=(H, W)).to(g.dtype)
