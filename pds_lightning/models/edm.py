"""EDM preconditioning (Karras et al. 2022): a denoiser D(x; sigma) around an NCSN++ / DDPM++ network F.

D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), with c_skip = sd^2 / (s^2 + sd^2), c_out = s sd /
sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4 (s = sigma, sd = sigma_data). x is in
sigma-space, x = x0 + sigma n; `ScoreModel` maps D to the score of each SDE's own x (models/score.py).

How F sees exactly c_noise: NCSN++'s Fourier embedding projects log(labels), so it gets labels = exp(c_noise)
= sigma^(1/4); the positional embedding (DDPM++) embeds the labels themselves, so it gets c_noise. F must not
divide its output by sigma (scale_by_sigma: false; c_out scales it) nor remap its input to [-1, 1]
(centered: true; c_in x is already unit-variance), so both are refused rather than silently overridden.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pds_lightning.classpath import allow_list, instantiate
from pds_lightning.sde import per_sample


def preconditioning(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) at noise levels `sigma` [B]."""
    total = sigma ** 2 + sigma_data ** 2
    return sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


class EDMPrecond(nn.Module):
    """D(x; sigma, class_labels) of a noise-conditional network `net` ({class_path, init_args} or a module).

    `is_denoiser` tells ScoreModel (also through a torch.compile wrapper) that the output is D, not a score.
    """

    is_denoiser = True

    def __init__(self, net: dict[str, Any] | nn.Module, sigma_data: float = 0.5):
        super().__init__()
        if isinstance(net, dict):
            # a nested spec may come from a checkpoint: the same allow-list as the outer one (env-extended)
            net = instantiate(net, "model.net.init_args.net", nn.Module, allow_list())
        if not isinstance(net, nn.Module):
            raise ValueError(f"EDMPrecond's net wants {{class_path, init_args}} of a network, got {type(net).__name__}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0 (the data's standard deviation; EDM uses 0.5), got {sigma_data}")
        if getattr(net, "scale_by_sigma", False):
            raise ValueError("EDMPrecond scales the network's output by c_out; build the network with "
                             "scale_by_sigma: false")
        if getattr(net, "centered", True) is False:
            raise ValueError("EDMPrecond feeds the network c_in x (unit variance, any data range); build the network "
                             "with centered: true so it does not remap its input to [-1, 1]")
        self.embedding_type = getattr(net, "embedding_type", "positional")
        if self.embedding_type not in ("fourier", "positional"):
            raise ValueError(f"EDMPrecond feeds c_noise to a 'fourier' or 'positional' noise embedding, got "
                             f"{self.embedding_type!r}")
        self.net, self.sigma_data = net, float(sigma_data)

    @property
    def num_classes(self) -> int | None:
        """Classes of a class-conditional network (index num_classes: the null class), else None."""
        return getattr(self.net, "num_classes", None) or None

    @property
    def image_size(self) -> int | None:
        return getattr(self.net, "image_size", None)

    def noise_labels(self, c_noise: Tensor) -> Tensor:
        """The labels that make F's noise embedding see c_noise (the Fourier one takes their log)."""
        return c_noise.exp() if self.embedding_type == "fourier" else c_noise

    def forward(self, x: Tensor, sigma: Tensor | float, class_labels: Tensor | None = None) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = preconditioning(sigma, self.sigma_data)
        extra = {} if class_labels is None else {"class_labels": class_labels}
        out = self.net(per_sample(c_in) * x, self.noise_labels(c_noise), **extra)
        return per_sample(c_skip) * x + per_sample(c_out) * out.to(x.dtype)
