"""Training objectives as components: one class per loss, chosen in YAML by `model.loss: {class_path, init_args}`.

Every loss has one call signature, so ScoreModule trains with any of them the same way:
`loss(model, sde, x, *, generator=None) -> scalar`, where `model(x_t, t)` is the score of the network being
trained (class labels already bound) and, for losses that train a denoiser, `model.denoise(x, sigma)` is
D(x; sigma) in sigma-space (x = x0 + sigma n).
A loss keeps each constructor argument as an attribute of the same name, so it is stored in a checkpoint as
plain data ({'class_path', 'init_args'}: `classpath.spec_of`) and rebuilt from it.
"""

from __future__ import annotations

import torch

from pds_lightning.sde import SDE, per_sample

#: score_sde draws training times in [TRAIN_EPS, T] for every SDE (get_sde_loss_fn's eps), not the sampling eps.
TRAIN_EPS = 1e-5


class Loss:
    """Base of the training objectives: a per-batch scalar from clean model-space images `x` [B, C, H, W]."""

    def __call__(self, model, sde: SDE, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError


class DSMLoss(Loss):
    """score_sde's continuous-time denoising score matching (losses.py get_sde_loss_fn).

    t ~ U[eps, T], z ~ N(0, I) (drawn in that order), x_t = mean(t) x + std(t) z; per sample the mean over
    pixels of (std s + z)^2 (`reduce_mean`) or half their sum; with `likelihood_weighting` the term is
    (s + z / std)^2 times g(t)^2 instead; then the mean over the batch.
    """

    def __init__(self, reduce_mean: bool = True, likelihood_weighting: bool = False, eps: float = TRAIN_EPS):
        if not 0.0 < eps < 1.0:
            raise ValueError(f"DSMLoss eps (the smallest training time) must lie in (0, 1), got {eps}; "
                             f"score_sde uses {TRAIN_EPS}")
        self.reduce_mean, self.likelihood_weighting, self.eps = bool(reduce_mean), bool(likelihood_weighting), eps

    def __call__(self, model, sde: SDE, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.eps < sde.T:
            raise ValueError(f"DSMLoss eps={self.eps} must be below the SDE's T={sde.T}")
        t = torch.rand(x.shape[0], device=x.device, dtype=x.dtype, generator=generator) * (sde.T - self.eps) + self.eps
        z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        mean, std = sde.marginal_prob(x, t)
        std = per_sample(std)
        score = model(mean + std * z, t)
        if self.likelihood_weighting:
            g2 = sde.sde(torch.zeros_like(x), t)[1] ** 2
            return (self.reduce_pixels((score + z / std) ** 2) * g2).mean()
        return self.reduce_pixels((score * std + z) ** 2).mean()

    def reduce_pixels(self, v: torch.Tensor) -> torch.Tensor:
        """Per-sample mean over pixels, or half the sum (score_sde's reduce_mean=False)."""
        dims = tuple(range(1, v.ndim))
        return v.mean(dim=dims) if self.reduce_mean else 0.5 * v.sum(dim=dims)

    def __repr__(self) -> str:
        return (f"DSMLoss(reduce_mean={self.reduce_mean}, likelihood_weighting={self.likelihood_weighting}, "
                f"eps={self.eps})")


#: The module arguments of checkpoints and configs before `model.loss`, and the DSMLoss argument each one is.
LEGACY_DSM_ARGUMENTS = {"reduce_mean": "reduce_mean", "likelihood_weighting": "likelihood_weighting",
                        "train_eps": "eps"}


def loss_with_legacy_arguments(loss: Loss | None, **legacy) -> Loss:
    """The loss a module trains with: `loss` (default DSMLoss()), with the old module arguments reduce_mean /
    likelihood_weighting / train_eps (None: not given) turned into DSMLoss arguments; a loss that says
    otherwise is refused, naming the key."""
    given = {LEGACY_DSM_ARGUMENTS[k]: v for k, v in legacy.items() if v is not None}
    if loss is None:
        return DSMLoss(**given)
    if given and not isinstance(loss, DSMLoss):
        keys = ", ".join(f"model.{k}" for k, v in legacy.items() if v is not None)
        raise ValueError(f"{keys} configure DSMLoss but model.loss is {type(loss).__name__}; remove {keys}")
    for old, new in LEGACY_DSM_ARGUMENTS.items():
        if new in given and given[new] != getattr(loss, new):
            raise ValueError(f"model.{old}={given[new]} contradicts model.loss {new}={getattr(loss, new)}; "
                             f"remove model.{old} and set model.loss.init_args.{new}")
    return loss
class EDMLoss(Loss):
    """EDM's denoiser loss (Karras et al. 2022): ln sigma ~ N(P_mean, P_std^2), y = x + sigma n,
    lambda(sigma) ||D(y; sigma) - x||^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

    Reduction: the mean over pixels per sample, then over the batch. EDM reports this per-pixel loss; its
    gradient is EDM's sum over pixels divided by the pixel count, a constant Adam barely sees, and it keeps the
    loss and the gradient-clipping threshold on the DSM loss's scale (score_sde's reduce_mean). Draws: the B
    sigmas first, then the noise n, both from `generator`. The SDE does not enter: D is trained in sigma-space,
    and ScoreModel maps it to the score of any SDE.
    """

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float | None = None):
        if not P_std > 0 or not (sigma_data is None or sigma_data > 0):
            raise ValueError(f"EDMLoss needs P_std > 0 and sigma_data > 0 (or None: the network's), got "
                             f"P_std={P_std}, sigma_data={sigma_data}")
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        self.sigma_data = None if sigma_data is None else float(sigma_data)

    def weight(self, sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out(sigma)^2: the network's own target then has unit weight at every sigma."""
        return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2

    def sigma_data_of(self, model) -> float:
        """The data std the weight uses: the denoiser's own (EDMPrecond.sigma_data; one home for the fact), or
        this loss's where the model has none; both given and different is refused."""
        own = getattr(model, "sigma_data", None)
        if own is not None and self.sigma_data is not None and float(own) != self.sigma_data:
            raise ValueError(f"model.loss sigma_data={self.sigma_data:g} contradicts the network's sigma_data={own:g}; "
                             "leave the loss's unset (it reads the network's)")
        if own is None and self.sigma_data is None:
            raise ValueError("EDMLoss has no sigma_data: the model carries none; set model.loss.init_args.sigma_data")
        return float(own if own is not None else self.sigma_data)

    def __call__(self, model, sde: SDE, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if not callable(getattr(model, "denoise", None)):
            raise ValueError("EDMLoss trains a denoiser but the model has no denoise(x, sigma); wrap model.net in "
                             "pds_lightning.models.edm.EDMPrecond")
        z = torch.randn(x.shape[0], device=x.device, dtype=x.dtype, generator=generator)
        sigma = (self.P_mean + self.P_std * z).exp()
        n = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        error = model.denoise(x + per_sample(sigma) * n, sigma) - x
        sigma_data = self.sigma_data_of(model)
        return (self.weight(sigma, sigma_data) * error.square().flatten(1).mean(1)).mean()
