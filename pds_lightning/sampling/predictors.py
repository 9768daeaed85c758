"""Predictors of the PC sampler (score_sde semantics), each preconditioned through the hook.

`update(x, t) -> (x, x_mean)`: x_mean is the step without its noise (used for noise removal).
Every drift increment goes through `hook.drift` (M M^T) and every noise draw through `hook.noise` (M).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pds_lightning.sde import SDE, VESDE, VPSDE, SubVPSDE, per_sample


class Predictor:
    def __init__(self, sde: SDE, score_fn, hook):
        self.sde = sde
        self.score_fn = score_fn
        self.hook = hook

    def update(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class ReverseDiffusionPredictor(Predictor):
    """x_mean = x - M M^T f, x = x_mean + G M z, with (f, G) the discretised reverse SDE."""

    def update(self, x, t):
        f, G = self.sde.reverse(self.score_fn).discretize(x, t)
        x_mean = x - self.hook.drift(f)
        return x_mean + per_sample(G) * self.hook.noise(x), x_mean


class EulerMaruyamaPredictor(Predictor):
    """Euler-Maruyama step of the reverse SDE with dt = -1/N."""

    def update(self, x, t):
        dt = -1.0 / self.sde.N
        z = self.hook.noise(x)  # drawn before the score, as the official code does
        drift, diffusion = self.sde.reverse(self.score_fn).sde(x, t)
        x_mean = x + self.hook.drift(drift * dt)
        return x_mean + per_sample(diffusion) * math.sqrt(-dt) * z, x_mean


class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling of the SMLD (VE) or DDPM (VP) chain."""

    def __init__(self, sde, score_fn, hook):
        if isinstance(sde, SubVPSDE) or not isinstance(sde, (VESDE, VPSDE)):
            raise ValueError(f"ancestral_sampling supports VE and VP SDEs only, not {type(sde).__name__}; "
                             "use reverse_diffusion or euler_maruyama")
        super().__init__(sde, score_fn, hook)

    def update(self, x, t):
        i = self.sde.timestep(t)
        score = self.score_fn(x, t)
        if isinstance(self.sde, VESDE):
            sigmas = self.sde.discrete_sigmas.to(device=x.device, dtype=x.dtype)
            sigma = sigmas[i]
            sigma_prev = torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp(min=0)])
            x_mean = x + self.hook.drift(score * per_sample(sigma ** 2 - sigma_prev ** 2))
            std = torch.sqrt(sigma_prev ** 2 * (sigma ** 2 - sigma_prev ** 2) / sigma ** 2)
        else:
            beta = self.sde.discrete_betas.to(device=x.device, dtype=x.dtype)[i]
            step = (x + per_sample(beta) * score) / per_sample(torch.sqrt(1.0 - beta)) - x
            x_mean = x + self.hook.drift(step)
            std = torch.sqrt(beta)
        return x_mean + per_sample(std) * self.hook.noise(x), x_mean


class NonePredictor(Predictor):
    """No predictor (corrector-only sampling)."""

    def update(self, x, t):
        return x, x


PREDICTORS = {
    "reverse_diffusion": ReverseDiffusionPredictor,
    "euler_maruyama": EulerMaruyamaPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
}


def get_predictor(name: str) -> type[Predictor]:
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; choose one of {sorted(PREDICTORS)}")
    return PREDICTORS[name]
