"""ProbabilityFlowODE: Heun's method on the model's probability-flow ODE (no PDS: M M^T would change the flow)."""

from __future__ import annotations

from pds_lightning.sampling.base import Sampler, check_budget, check_type
from pds_lightning.sampling.samplers import ode_sampler
from pds_lightning.sde import SDE, resolve_steps


class ProbabilityFlowODE(Sampler):
    """`steps` fixed Heun steps from T to eps (2 NFE each), or `speed_up`; `denoise` ends with one noise-free
    reverse-diffusion step at eps, as score_sde does (1 more NFE)."""

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 denoise: bool = True, name: str | None = None, guidance_scale: float = 0.0,
                 check_finite_every: int = 0):
        super().__init__(name, guidance_scale, check_finite_every)
        check_budget(self.name, "steps", steps, speed_up, eps)
        check_type(self.name, "denoise", denoise, bool, "true or false")
        self.steps, self.speed_up, self.eps, self.denoise = steps, float(speed_up), eps, denoise

    def nfe(self, sde: SDE) -> int:
        N, _ = resolve_steps(sde.N, sde.default_eps, n_steps=self.steps, speed_up=self.speed_up, eps=self.eps)
        return 2 * N + int(self.denoise)

    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None):
        self.known_unsupported(known)
        return ode_sampler(score_fn, sde, shape, noise=noise, preconditioner=preconditioner, n_steps=self.steps,
                           speed_up=self.speed_up, eps=self.eps, denoise=self.denoise,
                           check_finite_every=self.check_finite_every)
