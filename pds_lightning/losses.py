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
