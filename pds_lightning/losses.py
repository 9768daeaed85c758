"""Training objectives as components: one class per loss, chosen in YAML by `model.loss: {class_path, init_args}`.

Every loss has one call signature, so ScoreModule trains with any of them the same way:
`loss(model, sde, x, *, generator=None) -> scalar`, where `model(x_t, t)` is the score of the network being
trained (class labels already bound) and, for losses that train a denoiser, `model.denoise(x, sigma)` is
D(x; sigma) in sigma-space (x = x0 + sigma n).
"""

from __future__ import annotations

import torch

from pds_lightning.sde import SDE


class Loss:
    """Base of the training objectives: a per-batch scalar from clean model-space images `x` [B, C, H, W]."""

    def __call__(self, model, sde: SDE, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError
