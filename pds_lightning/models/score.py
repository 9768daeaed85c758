"""Network output -> score, with score_sde's conventions for what the network is fed.

- VE, continuous: labels = sigma(t) (the marginal std); the network output is the score.
- VE, discrete: labels = round((T - t) (N - 1)), the SMLD level index (0 = largest sigma).
- VP / sub-VP, continuous (sub-VP always): labels = 999 t; score = -output / std(t).
- VP, discrete: labels = t (N - 1); score = -output / sqrt(1 - alphas_cumprod)[labels].
- A denoiser network (`is_denoiser`, e.g. models/edm.py's EDMPrecond), any SDE, continuous only: D(x_hat; sigma)
  in sigma-space, x = s(t) x_hat, sigma = sigma(t); score = (D - x_hat) / (s sigma^2), since grad_x = grad_x_hat / s.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from pds_lightning.sde import SDE, SubVPSDE, VESDE, VPSDE, per_sample


class ScoreModel(nn.Module):
    """``score(x, t)`` of a noise-conditional network ``net(x, labels)`` under ``sde``.

    The score comes back in x's dtype: under autocast the network may run in bf16 / fp16, while the SDE
    arithmetic, the PDS filters and the step sizes that use the score stay in x's precision (float32).
    """

    def __init__(self, net: nn.Module, sde: SDE, continuous: bool = True):
        super().__init__()
        if not isinstance(sde, (VESDE, VPSDE)):
            raise TypeError(f"ScoreModel supports VESDE, VPSDE and SubVPSDE, got {type(sde).__name__}")
        if self.denoiser_net(net) and not continuous:
            raise ValueError("a denoiser network (EDMPrecond) is conditioned on sigma itself; use continuous=True")
        if not continuous and getattr(net, "embedding_type", None) == "fourier":
            raise ValueError("a Fourier noise embedding needs continuous=True (it embeds log sigma, not a "
                             "level index); use embedding_type='positional' for discrete training")
        self.net, self.sde, self.continuous = net, sde, continuous

    @staticmethod
    def denoiser_net(net) -> bool:
        """Whether `net` returns D(x; sigma) (EDMPrecond) rather than a score_sde output."""
        return bool(getattr(net, "is_denoiser", False))

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network (index num_classes: the null class), else None."""
        return getattr(self.net, "num_classes", None) or None

    @property
    def sigma_data(self) -> float | None:
        """The data std a denoiser network is preconditioned with (EDMPrecond), else None."""
        return getattr(self.net, "sigma_data", None) if self.denoiser_net(self.net) else None

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) in sigma-space (x = x0 + sigma n), in x's dtype: what the EDM loss trains."""
        if not self.denoiser_net(self.net):
            raise ValueError("denoise needs a denoiser network; wrap model.net in pds_lightning.models.edm.EDMPrecond "
                             "(score_sde networks output a score, trained by the DSM loss)")
        extra = {} if class_labels is None else {"class_labels": class_labels}
        return self.net(x, sigma, **extra).to(x.dtype)

    def with_labels(self, class_labels: torch.Tensor | None) -> "LabelledScore":
        """This model with `class_labels` bound, as a loss calls it: `(x, t) -> score` and `denoise(x, sigma)`."""
        return LabelledScore(self, class_labels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        sde = self.sde
        if self.denoiser_net(self.net):
            s, sigma = sde.scale_of_t(t).to(x.dtype), sde.sigma_of_t(t).to(x.dtype)
            x_hat = x / per_sample(s)
            return (self.denoise(x_hat, sigma, class_labels) - x_hat) / per_sample(s * sigma ** 2)
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
    """A ScoreModel with one batch's class labels bound (None: unconditional), keeping its `denoise`."""

    def __init__(self, model: ScoreModel, class_labels: torch.Tensor | None):
        self.model, self.labels = model, class_labels

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, self.labels)

    @property
    def sigma_data(self) -> float | None:
        return self.model.sigma_data

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        return self.model.denoise(x, sigma, self.labels)
