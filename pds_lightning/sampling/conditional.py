"""Inpainting and colorization: the known part of each task (the PC loop's hook, sampling/known.py), run by
`generate(..., known=...)` with a PC sampler, vanilla or PDS: score_sde's controllable generation.

The known part of an image is a set of coordinates y = U^T x (per pixel, U an orthonormal C x C channel basis)
selected by a 0/1 mask on y. Inpainting: U = I, the mask marks known pixels. Colorization: U's first column is
the gray axis (1, 1, 1)/sqrt(3), so the known coordinate is sqrt(3) (R + G + B)/3 (score_sde's basis; the
other two columns are any orthonormal completion, which leaves the result unchanged).

Semantics (score_sde): x_T = known data on the known part, the prior elsewhere; after every corrector and
every predictor update the known part is re-imposed from the forward process, y_known(t) = mean_t(y) +
std_t z. The returned image carries the input's known part exactly (t -> 0 of the forward mean). One
difference: score_sde builds the noise-free x_mean from the *noisy* x on the unknown part (so `denoise`
leaves the filled region's last noise in); here x_mean keeps the update's own mean there.

PDS mixes pixels, so its preconditioner is restricted in one of two ways (`PDS(restrict=...)`):
  'project'  (default) M acts on the whole image and the update is then projected: the known part is
             overwritten, exactly, after each step. With M = I this is score_sde's vanilla sampler.
  'subspace' M' = P M with P the projection onto the unknown part: drift P M M^T P g, noise P M z; the update
             never moves the known part (and the Langevin step size sees only the unknown part).
Either way the known part of the output equals the input's exactly (tests/sampling/test_conditional.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pds_lightning.sampling.known import KnownPart, RestrictedPreconditioner, color_basis
from pds_lightning.sampling.pds import RESTRICT_CHOICES


def clip_keeping_gray(x: Tensor) -> Tensor:
    """RGB images [B, 3, H, W] brought into [0, 1] by shrinking each pixel's colour towards its gray
    (R + G + B)/3, which stays exact (a plain clamp would change it); gray must already lie in [0, 1]."""
    gray = x.mean(1, keepdim=True)
    chroma = x - gray
    room = torch.where(chroma > 0, (1 - gray) / chroma.clamp_min(1e-12), gray / (-chroma).clamp_min(1e-12))
    scale = room.amin(1, keepdim=True).clamp(0.0, 1.0)
    return gray + scale * chroma


__all__ = ["RESTRICT_CHOICES", "KnownPart", "RestrictedPreconditioner", "color_basis", "clip_keeping_gray"]
