"""Classifier-free guidance as one score transform, so every sampler (PC with or without PDS, the ODE, the
sigma-space solvers) is guided the same way: it only ever sees a score function score(x, t).

Convention (w = guidance scale): score = s_uncond + (1 + w) (s_cond - s_uncond); w = 0 is the plain
conditional score, w > 0 samples p_t(x | c)^(1 + w) / p_t(x)^w. The unconditional score is the network's
null class (index num_classes, the class that label dropout trains).
"""

from __future__ import annotations

import torch
from torch import Tensor


def guided_score(score_fn, class_labels: Tensor, scale: float, null_class: int):
    """score(x, t) of classes `class_labels` [B] guided with scale w, from `score_fn(x, t, class_labels)`.

    With w != 0 the conditional and unconditional scores come from ONE network call on the batch doubled
    ([x; x] with labels [c; null]); with w = 0 only the conditional half is evaluated.
    """
    labels = torch.as_tensor(class_labels).long()
    if scale == 0:
        return lambda x, t: score_fn(x, t, labels.to(x.device))

    def score(x: Tensor, t: Tensor) -> Tensor:
        c = labels.to(x.device)
        both = score_fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, torch.full_like(c, null_class)]))
        cond, uncond = both.chunk(2)
        return uncond + (1.0 + scale) * (cond - uncond)

    return score
