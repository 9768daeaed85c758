"""Predictors of the PC sampler (score_sde semantics), each preconditioned by PDS.

`update(x, t) -> (x, x_mean)`: x_mean is the step without its noise (used for noise removal).
Official PDS (`PREDICTORS`): every drift increment gets M M^T (`preconditioner.drift`) and every noise
draw M (`preconditioner.noise`). With noise g M z that drift does not keep the marginals p_t: the
Fokker-Planck equation gains -(g^2/2) div((M M^T - I) grad p_t), so output variances are biased on
preconditioned modes even as N grows. Consistent PDS (`CONSISTENT_PREDICTORS`): drift f - (g^2/2)
(I + M M^T) score with the same noise g M z, which keeps p_t. The identity preconditioner (no filters)
makes both vanilla sampling.
"""

from __future__ import annotations

import math

import torch

from pds_lightning.sampling.base import Component
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


class ConsistentReverseDiffusionPredictor(Predictor):
    """x_mean = x - f + (G^2 / 2)(I + M M^T) score, x = x_mean + G M z: keeps p_t (official: M M^T on all)."""

    def update(self, x, t):
        f, G = self.sde.discretize(x, t)
        score = self.score_fn(x, t)
        x_mean = x - f + per_sample(G ** 2 / 2) * (score + self.preconditioner.drift(score))
        return x_mean + per_sample(G) * self.mz(x), x_mean


class ConsistentEulerMaruyamaPredictor(Predictor):
    """Euler-Maruyama of dx = [f - (g^2 / 2)(I + M M^T) score] dt + g M dw, dt = -1/N: keeps p_t."""

    def update(self, x, t):
        dt = -1.0 / self.sde.N
        z = self.mz(x)
        f, g = self.sde.sde(x, t)
        score = self.score_fn(x, t)
        x_mean = x + (f - per_sample(g ** 2 / 2) * (score + self.preconditioner.drift(score))) * dt
        return x_mean + per_sample(g) * math.sqrt(-dt) * z, x_mean


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
#: Values of `pds_predictor`: the official PDS predictor, or the consistent one that keeps p_t.
PDS_PREDICTOR_CHOICES = ("official", "consistent")
#: The consistent predictors; the others (ancestral_sampling) exist in the official form only.
CONSISTENT_PREDICTORS = {
    "reverse_diffusion": ConsistentReverseDiffusionPredictor,
    "euler_maruyama": ConsistentEulerMaruyamaPredictor,
    "none": NonePredictor,
}


def predictor_class(predictor: str, pds_predictor: str = "official") -> type[Predictor]:
    """The predictor class by name and PDS variant ('official' or 'consistent')."""
    if pds_predictor not in PDS_PREDICTOR_CHOICES:
        raise ValueError(f"unknown pds_predictor {pds_predictor!r}; choose 'official' (the PDS paper's update, "
                         "which does not keep p_t) or 'consistent' (drift f - (g^2/2)(I + M M^T) score, keeps p_t)")
    table = PREDICTORS if pds_predictor == "official" else CONSISTENT_PREDICTORS
    if predictor not in table:
        raise ValueError(f"pds_predictor 'consistent' exists for {sorted(CONSISTENT_PREDICTORS)}, not "
                         f"{predictor!r}; use predictor reverse_diffusion or euler_maruyama, or pds_predictor "
                         "'official'")
    return table[predictor]


# ---- components (configured by class_path; PC takes one, or none for corrector-only sampling) ----------------


class PredictorComponent(Component):
    """A PC predictor as configured; `kind` names its update rule in the tables above."""

    kind = ""
    consistent_form = True

    def __init__(self):
        pass


class ReverseDiffusion(PredictorComponent):
    """score_sde's reverse-diffusion predictor (the discretised reverse SDE); PDS official or consistent."""

    kind = "reverse_diffusion"


class EulerMaruyama(PredictorComponent):
    """Euler-Maruyama on the reverse SDE with dt = -1/N; PDS official or consistent."""

    kind = "euler_maruyama"


class AncestralSampling(PredictorComponent):
    """Ancestral sampling of the SMLD (VE) / DDPM (VP) chain; PDS official form only."""

    kind = "ancestral_sampling"
    consistent_form = False
