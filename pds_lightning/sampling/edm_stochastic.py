"""EDMStochastic: EDM's stochastic sampler (Karras et al. 2022, Alg. 2); 2N - 1 NFE."""

from __future__ import annotations

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import PDS
from pds_lightning.sampling.schedules import Karras, Schedule
from pds_lightning.sampling.sigma import SigmaSampler


class EDMStochastic(SigmaSampler):
    """Raise sigma_i to (1 + gamma) sigma_i by fresh noise (gamma = min(S_churn / N, sqrt 2 - 1) inside
    [S_tmin, S_tmax], None: no upper bound; noise scaled by S_noise), then a Heun step. Other fields: SigmaSampler."""

    method = "edm_stochastic"

    def __init__(self, levels: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None, pds: PDS | None = None,
                 S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float | None = None, S_noise: float = 1.0,
                 name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(levels, speed_up, eps, schedule, corrector, pds, name, guidance_scale, check_finite_every)
        check_number(self.name, "S_churn", S_churn, low=0, hint=" (0: deterministic)")
        check_number(self.name, "S_noise", S_noise, low=0, low_open=True, hint=" (EDM uses 1 to 1.007)")
        check_number(self.name, "S_tmin", S_tmin, low=0)
        if S_tmax is not None:
            check_number(self.name, "S_tmax", S_tmax, low=S_tmin, hint=" (S_tmin) or None (no upper bound)")
        self.S_churn, self.S_tmin, self.S_noise = float(S_churn), float(S_tmin), float(S_noise)
        self.S_tmax = None if S_tmax is None else float(S_tmax)

    def extra_kwargs(self) -> dict:
        return dict(S_churn=self.S_churn, S_tmin=self.S_tmin, S_tmax=self.S_tmax, S_noise=self.S_noise)
