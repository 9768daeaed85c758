"""Network output -> score, with score_sde's conventions for what the network is fed.

- VE, continuous: labels = sigma(t) (the marginal std); the network output is the score.
- VE, discrete: labels = round((T - t) (N - 1)), the SMLD level index (0 = largest sigma).
- VP / sub-VP, continuous (sub-VP always): labels = 999 t; score = -output / std(t).
- VP, discrete: labels = t (N - 1); score = -output / sqrt(1 - alphas_cumprod)[labels].
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from pds_lightning.sde import SDE, SubVPSDE, VESDE, VPSDE


class ScoreModel(nn.Module):
    """``score(x, t)`` of a noise-conditional network ``net(x, labels)`` under ``sde``.

    The score comes back in x's dtype: under autocast the network may run in bf16 / fp16, while the SDE
    arithmetic, the PDS filters and the step sizes that use the score stay in x's precision (float32).
    """

    def __init__(self, net: nn.Module, sde: SDE, continuous: bool = True):
        super().__init__()
        if not isinstance(sde, (VESDE, VPSDE)):
            raise TypeError(f"ScoreModel supports VESDE, VPSDE and SubVPSDE, got {type(sde).__name__}")
        if not continuous and getattr(net, "embedding_type", None) == "fourier":
            raise ValueError("a Fourier noise embedding needs continuous=True (it embeds log sigma, not a "
                             "level index); use embedding_type='positional' for discrete training")
        self.net, self.sde, self.continuous = net, sde, continuous

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network (index num_classes: the null class), else None."""
        return getattr(self.net, "num_classes", None) or None

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sde = self.sde
        net = self.net if class_labels is None else partial(self.net, class_labels=class_labels)
        zeros = torch.zeros_like(x)
        if isinstance(sde, VESDE):
            if self.continuous:
                labels = sde.marginal_prob(zeros, t)[1]
            else:
                labels = torch.round((sde.T - t) * (sde.N - 1)).long()
            return net(x, labels).to(x.dtype)
        if self.continuous or isinstance(sde, SubVPSDE):
            # continuous VP-family models take time embeddings whose largest value is 999
            out = net(x, t * 999)
            std = sde.marginal_prob(zeros, t)[1]
        else:
            labels = t * (sde.N - 1)
            out = net(x, labels)
            std = sde.sqrt_1m_alphas_cumprod.to(device=x.device, dtype=x.dtype)[labels.long()]
        return (-out.to(x.dtype)) / std.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class LabelledScore:
    """A score model with one batch's class labels bound: `model(x, t)` and `model.denoise(x, sigma)` are the
    wrapped model's with `class_labels`, so a loss sees a conditional model as it sees an unconditional one."""

    def __init__(self, model: nn.Module, labels: torch.Tensor):
        self.model, self.labels = model, labels

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, self.labels)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model.denoise(x, sigma, self.labels)
