"""Predictors of the PC sampler (score_sde semantics), each preconditioned by PDS.

`update(x, t) -> (x, x_mean)`: x_mean is the step without its noise (used for noise removal).
Every drift increment gets M M^T (`preconditioner.drift`) and every noise draw M (`preconditioner.noise`);
the identity preconditioner (no filters) is vanilla sampling.
"""

from __future__ import annotations

import math

import torch

from pds_lightning.sampling.step import Step
from pds_lightning.sde import VESDE, VPSDE, SubVPSDE, per_sample


class Predictor(Step):
    """A predictor: one step of the discretised reverse SDE from t_i to t_{i+1}."""


class ReverseDiffusionPredictor(Predictor):
    """x_mean = x - M M^T f, x = x_mean + G M z, with (f, G) the discretised reverse SDE."""

    def update(self, x, t):
        f, G = self.sde.reverse(self.score_fn).discretize(x, t)
        x_mean = x - self.preconditioner.drift(f)
        return x_mean + per_sample(G) * self.mz(x), x_mean


class EulerMaruyamaPredictor(Predictor):
    """Euler-Maruyama step of the reverse SDE with dt = -1/N."""

    def update(self, x, t):
        dt = -1.0 / self.sde.N
        z = self.mz(x)  # drawn before the score, as the official code does
        drift, diffusion = self.sde.reverse(self.score_fn).sde(x, t)
        x_mean = x + self.preconditioner.drift(drift * dt)
        return x_mean + per_sample(diffusion) * math.sqrt(-dt) * z, x_mean


class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling of the SMLD (VE) or DDPM (VP) chain."""

    def __init__(self, sde, score_fn, preconditioner, noise):
        if isinstance(sde, SubVPSDE) or not isinstance(sde, (VESDE, VPSDE)):
            raise ValueError(f"ancestral_sampling supports VE and VP SDEs only, not {type(sde).__name__}; "
                             "use reverse_diffusion or euler_maruyama")
        super().__init__(sde, score_fn, preconditioner, noise)

    def update(self, x, t):
        score = self.score_fn(x, t)
        if isinstance(self.sde, VESDE):
            sigma, sigma_prev = self.sde.sigma_and_prev(t, x)
            x_mean = x + self.preconditioner.drift(score * per_sample(sigma ** 2 - sigma_prev ** 2))
            std = torch.sqrt(sigma_prev ** 2 * (sigma ** 2 - sigma_prev ** 2) / sigma ** 2)
        else:
            beta = self.sde.discrete_betas.to(device=x.device, dtype=x.dtype)[self.sde.timestep(t)]
            step = (x + per_sample(beta) * score) / per_sample(torch.sqrt(1.0 - beta)) - x
            x_mean = x + self.preconditioner.drift(step)
            std = torch.sqrt(beta)
        return x_mean + per_sample(std) * self.mz(x), x_mean


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
