"""EDMStochastic: EDM's stochastic sampler (Karras et al. 2022, Alg. 2); 2N - 1 NFE."""

from __future__ import annotations

import math

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import Preconditioning
from pds_lightning.sampling.schedules import Karras, Schedule
from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.solvers import heun_step


class EDMStochastic(SigmaSampler):
    """Raise sigma_i to sigma_hat = (1 + gamma) sigma_i by fresh noise (gamma = min(S_churn / N, sqrt 2 - 1)
    inside [S_tmin, S_tmax], None: no upper bound; noise scaled by S_noise), then a Heun step to sigma_{i+1}.
    One draw per step, taken even where gamma = 0 (the stream does not depend on the window). S_tmin, S_tmax
    and S_noise act only through the churn, so with S_churn 0 they must keep their defaults. Other fields:
    SigmaSampler."""

    isotropic_jump = "churn"

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None, pds: Preconditioning | None = None,
                 S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float | None = None, S_noise: float = 1.0,
                 name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(steps, speed_up, eps, schedule, corrector, pds, name, guidance_scale, check_finite_every)
        check_number(self.name, "S_churn", S_churn, low=0, hint=" (0: deterministic)")
        check_number(self.name, "S_noise", S_noise, low=0, low_open=True, hint=" (EDM uses 1 to 1.007)")
        check_number(self.name, "S_tmin", S_tmin, low=0)
        if S_tmax is not None:
            check_number(self.name, "S_tmax", S_tmax, low=S_tmin, hint=" (S_tmin) or None (no upper bound)")
        idle = [f"{k} {v}" for k, v, default in (("S_tmin", S_tmin, 0), ("S_tmax", S_tmax, None),
                                                  ("S_noise", S_noise, 1)) if v != default]
        if S_churn == 0 and idle:
            raise ValueError(f"{self.name}: {', '.join(idle)} has no effect with S_churn 0 (no noise is added); "
                             "set S_churn > 0 or remove it")
        self.S_churn, self.S_tmin, self.S_noise = float(S_churn), float(S_tmin), float(S_noise)
        self.S_tmax = None if S_tmax is None else float(S_tmax)

    def score_calls(self, n):
        return 2 * n - 1

    def step(self, run, x, sigma, sigma_next):
        s_tmax = math.inf if self.S_tmax is None else self.S_tmax
        gamma = min(self.S_churn / run.n, math.sqrt(2) - 1) if self.S_tmin <= sigma <= s_tmax else 0.0
        z = self.S_noise * run.noise.noise(x)
        sigma_hat = sigma * (1 + gamma)
        x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * z
        return heun_step(run.denoise, x, sigma_hat, sigma_next)
