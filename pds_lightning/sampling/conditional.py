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

#: The conditional tasks and the channel count each needs (None: any).
TASKS = {"inpaint": None, "colorize": 3}


def clip_keeping_gray(x: Tensor) -> Tensor:
    """RGB images [B, 3, H, W] brought into [0, 1] by shrinking each pixel's colour towards its gray
    (R + G + B)/3, which stays exact (a plain clamp would change it); gray must already lie in [0, 1]."""
    gray = x.mean(1, keepdim=True)
    chroma = x - gray
    room = torch.where(chroma > 0, (1 - gray) / chroma.clamp_min(1e-12), gray / (-chroma).clamp_min(1e-12))
    scale = room.amin(1, keepdim=True).clamp(0.0, 1.0)
    return gray + scale * chroma


def known_part_for(task: str, images: Tensor, mask: Tensor | None = None) -> KnownPart:
    """The KnownPart of a task over model-space images [B, C, H, W]: 'inpaint' keeps mask == 1 pixels (mask
    [B, 1 or C, H, W]); 'colorize' keeps the gray axis of RGB images (gray inputs replicated to 3 channels)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if task == "inpaint":
        if mask is None:
            raise ValueError("inpainting needs a mask (1 = known pixel, 0 = to fill)")
        return KnownPart(images, mask)
    if images.shape[1] != 3:
        raise ValueError(f"colorization needs RGB images (3 channels), got {images.shape[1]}; set "
                         "data.num_channels: 3 and a model trained on colour images")
    mask = torch.zeros_like(images[:1])
    mask[:, 0] = 1.0
    return KnownPart(images, mask, color_basis())


__all__ = ["TASKS", "RESTRICT_CHOICES", "KnownPart", "RestrictedPreconditioner", "color_basis", "clip_keeping_gray",
           "known_part_for"]
