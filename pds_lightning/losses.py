"""Training objectives as components: one class per loss, chosen in YAML by `model.loss: {class_path, init_args}`.

Every loss has one call signature, so ScoreModule trains with any of them the same way:
`loss(model, sde, x, *, generator=None) -> scalar`, where `model(x_t, t)` is the score of the network being
trained (class labels already bound) and, for losses that train a denoiser, `model.denoise(x, sigma)` is
D(x; sigma) in sigma-space (x = x0 + sigma n).
"""

from __future__ import annotations

import torch

from pds_lightning.sde import SDE, per_sample


class Loss:
    """Base of the training objectives: a per-batch scalar from clean model-space images `x` [B, C, H, W]."""

    def __call__(self, model, sde: SDE, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class EDMLoss(Loss):
    """EDM's denoiser loss (Karras et al. 2022): ln sigma ~ N(P_mean, P_std^2), y = x + sigma n,
    lambda(sigma) ||D(y; sigma) - x||^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

    Reduction: the mean over pixels per sample, then over the batch. EDM reports this per-pixel loss; its
    gradient is EDM's sum over pixels divided by the pixel count, a constant Adam barely sees, and it keeps the
    loss and the gradient-clipping threshold on the DSM loss's scale (score_sde's reduce_mean). Draws: the B
    sigmas first, then the noise n, both from `generator`. The SDE does not enter: D is trained in sigma-space,
    and ScoreModel maps it to the score of any SDE.
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5):
        if not P_std > 0 or not sigma_data > 0:
            raise ValueError(f"EDMLoss needs P_std > 0 and sigma_data > 0, got P_std={P_std}, sigma_data={sigma_data}")
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out(sigma)^2: the network's own target then has unit weight at every sigma."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def __call__(self, model, sde: SDE, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if not callable(getattr(model, "denoise", None)):
            raise ValueError("EDMLoss trains a denoiser but the model has no denoise(x, sigma); wrap model.net in "
                             "pds_lightning.models.edm.EDMPrecond")
        z = torch.randn(x.shape[0], device=x.device, dtype=x.dtype, generator=generator)
        sigma = (self.P_mean + self.P_std * z).exp()
        n = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        error = model.denoise(x + per_sample(sigma) * n, sigma) - x
        return (self.weight(sigma) * error.square().flatten(1).mean(1)).mean()
