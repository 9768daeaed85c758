"""The known part of inpainting / colorization as a hook of the PC loop (see sampling/conditional.py).

`KnownPart.after_update` re-imposes the known coordinates, diffused to t by the forward process, after every
corrector and predictor update (score_sde's controllable generation); `RestrictedPreconditioner` keeps PDS
off the known part ('subspace').
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sde import SDE, per_sample

def color_basis(dtype=torch.float64) -> Tensor:
    """Orthonormal RGB basis [3, 3] (columns): the gray axis (1, 1, 1)/sqrt(3), then (-2, 1, 1)/sqrt(6), (0, 1, -1)/sqrt(2)."""
    return torch.tensor([[1 / math.sqrt(3), -2 / math.sqrt(6), 0.0],
                         [1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)],
                         [1 / math.sqrt(3), 1 / math.sqrt(6), -1 / math.sqrt(2)]], dtype=dtype)


class KnownPart:
    """The known coordinates y = U^T data (mask 1) of a batch in model space; `impose` puts them into x.

    `basis` None is U = I (inpainting: pixels are kept bit for bit); `mask` [B or 1, C or 1, H, W] in y's
    coordinates, 1 known and 0 unknown.
    """

    def __init__(self, data: Tensor, mask: Tensor, basis: Tensor | None = None):
        if data.dim() != 4:
            raise ValueError(f"known data must be [B, C, H, W], got {tuple(data.shape)}")
        mask = mask.to(device=data.device, dtype=data.dtype)
        if mask.dim() != 4 or not set(torch.unique(mask).tolist()) <= {0.0, 1.0}:
            raise ValueError("mask must be a [B, C or 1, H, W] tensor of 0 (unknown) and 1 (known)")
        self.basis = None if basis is None else basis.to(device=data.device, dtype=data.dtype)
        if self.basis is not None and tuple(self.basis.shape) != (data.shape[1],) * 2:
            raise ValueError(f"channel basis {tuple(self.basis.shape)} does not fit {data.shape[1]} channels")
        self.mask = mask.expand_as(data)
        self.y = self.decouple(data)

    def decouple(self, x: Tensor) -> Tensor:
        """y = U^T x per pixel."""
        return x if self.basis is None else torch.einsum("bihw,ij->bjhw", x, self.basis)

    def couple(self, y: Tensor) -> Tensor:
        """x = U y per pixel."""
        return y if self.basis is None else torch.einsum("bjhw,ij->bihw", y, self.basis)

    def impose(self, x: Tensor, y_known: Tensor) -> Tensor:
        """x with its known coordinates replaced by y_known's."""
        if self.basis is None:
            return torch.where(self.mask.bool(), y_known, x)
        return self.couple(torch.where(self.mask.bool(), y_known, self.decouple(x)))

    def unknown(self, x: Tensor) -> Tensor:
        """P x: the unknown part of x (its known coordinates set to 0)."""
        return self.impose(x, torch.zeros_like(x))

    def forward_sample(self, sde: SDE, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """(mean_t(y) + std_t z, mean_t(y)): the known coordinates diffused to t by the forward process."""
        mean, std = sde.marginal_prob(self.y, t)
        return mean + per_sample(std) * z, mean

    def after_update(self, sde: SDE, t: Tensor, noise, x: Tensor, x_mean: Tensor) -> tuple[Tensor, Tensor]:
        """(x, x_mean) with the known part replaced by its forward sample at t (one fresh draw)."""
        y_t, y_mean = self.forward_sample(sde, t, noise.noise(x))
        return self.impose(x, y_t), self.impose(x_mean, y_mean)


class RestrictedPreconditioner:
    """M' = P M: noise P M z and drift P M M^T P g, so an update leaves the known part where it is."""

    is_identity = False

    def __init__(self, preconditioner: Preconditioner, known: KnownPart):
        self.preconditioner, self.known = preconditioner, known

    def noise(self, z: Tensor) -> Tensor:
        return self.known.unknown(self.preconditioner.noise(z))

    def drift(self, g: Tensor) -> Tensor:
        return self.known.unknown(self.preconditioner.drift(self.known.unknown(g)))


