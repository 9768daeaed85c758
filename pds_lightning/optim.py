"""The optimizer as a component: `model.optimizer: {class_path, init_args}` builds the torch optimizer, gives the
learning rate of each step (warm-up) and clips the gradient, so ScoreModule holds no optimizer fields of its own.

An optimizer keeps each constructor argument as an attribute of the same name, so it is stored in a checkpoint as
plain data (`config()`) and rebuilt from it; older checkpoints and configs set the flat module keys of
`LEGACY_ADAM_ARGUMENTS`, turned into an Adam once (`optimizer_with_legacy_arguments`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

#: Adam's second-moment decay in score_sde (optax / torch default); the flat keys never set it.
DEFAULT_BETA2 = 0.999
#: The flat module arguments of checkpoints and configs before `model.optimizer`, and the Adam argument each is
#: (beta1 is the first of Adam's betas).
LEGACY_ADAM_ARGUMENTS = {"lr": "lr", "beta1": "betas", "adam_eps": "eps", "weight_decay": "weight_decay",
                         "warmup": "warmup", "grad_clip": "grad_clip"}


def warmup_factor(step: int, warmup: int) -> float:
    """score_sde's learning-rate warm-up: lr * min(step / warmup, 1), step = optimizer steps taken before this
    update (so the first update has rate 0); no warm-up when warmup <= 0."""
    return min(step / warmup, 1.0) if warmup > 0 else 1.0


class Optimizer:
    """Base of the optimizer components: `build(params)` the torch optimizer, `lr_at(step)` the rate of the update
    after `step` optimizer steps, `clip(params)` the gradient (returns its norm before clipping)."""

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        raise NotImplementedError

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def clip(self, params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
        raise NotImplementedError


class Adam(Optimizer):
    """score_sde's optimizer: Adam(lr, betas, eps, weight_decay), the rate warmed up linearly over `warmup`
    optimizer steps (`warmup_factor`; no scheduler, so a resumed run continues it from the global step), the
    gradient clipped to norm `grad_clip` (<= 0: not clipped)."""

    def __init__(self, lr: float = 2e-4, betas: tuple[float, float] = (0.9, DEFAULT_BETA2), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup: int = 5000, grad_clip: float = 1.0):
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Adam betas must be two numbers in [0, 1) (score_sde: [0.9, 0.999]), got {list(betas)}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Adam {name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"Adam eps must be a finite number > 0 (score_sde: 1e-8), got {eps}")
        if not math.isfinite(grad_clip):
            raise ValueError(f"Adam grad_clip must be finite (<= 0: no clipping), got {grad_clip}")
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.weight_decay, self.warmup, self.grad_clip = float(weight_decay), int(warmup), float(grad_clip)

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)

    def lr_at(self, step: int) -> float:
        return self.lr * warmup_factor(step, self.warmup)

    def clip(self, params: Iterable[torch.nn.Parameter]) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)

    def legacy_value(self, key: str) -> Any:
        """The value the flat module key `key` (LEGACY_ADAM_ARGUMENTS) had for this optimizer."""
        return self.betas[0] if key == "beta1" else getattr(self, LEGACY_ADAM_ARGUMENTS[key])

    def config(self) -> dict[str, Any]:
        """{'class_path', 'init_args'} as plain data (betas a list: YAML and JSON have no tuples)."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                "init_args": {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                              "weight_decay": self.weight_decay, "warmup": self.warmup, "grad_clip": self.grad_clip}}

    def __repr__(self) -> str:
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}, "
                f"warmup={self.warmup}, grad_clip={self.grad_clip})")


def optimizer_with_legacy_arguments(optimizer: Optimizer | None, **legacy: Any) -> Optimizer:
    """The optimizer a module trains with: `optimizer` (default Adam()), with the flat module arguments of older
    checkpoints and configs (LEGACY_ADAM_ARGUMENTS; None: not given) turned into Adam arguments; an optimizer that
    says otherwise is refused, naming the key (the rule of `losses.loss_with_legacy_arguments`)."""
    given = {k: v for k, v in legacy.items() if v is not None}
    if optimizer is None:
        args = {LEGACY_ADAM_ARGUMENTS[k]: v for k, v in given.items() if k != "beta1"}
        if "beta1" in given:
            args["betas"] = (given["beta1"], DEFAULT_BETA2)
        return Adam(**args)
    keys = ", ".join(f"model.{k}" for k in given)
    if given and not isinstance(optimizer, Adam):
        raise ValueError(f"{keys} configure Adam but model.optimizer is {type(optimizer).__name__}; remove {keys}")
    for key, value in given.items():
        own = optimizer.legacy_value(key)
        if value != own:
            raise ValueError(f"model.{key}={value} contradicts model.optimizer {LEGACY_ADAM_ARGUMENTS[key]}="
                             f"{list(optimizer.betas) if key == 'beta1' else own}; remove model.{key} and set "
                             f"model.optimizer.init_args.{LEGACY_ADAM_ARGUMENTS[key]}")
    return optimizer


__all__ = ["Adam", "DEFAULT_BETA2", "LEGACY_ADAM_ARGUMENTS", "Optimizer", "optimizer_with_legacy_arguments",
           "warmup_factor"]
