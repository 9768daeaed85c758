"""DPMSolverPP2MSDE: DPM-Solver++(2M) SDE (Lu et al. 2022), the stochastic multistep solver; N NFE."""

from __future__ import annotations

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import PDS
from pds_lightning.sampling.schedules import Karras, Schedule
from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.solvers import dpmpp_2m_step


class DPMSolverPP2MSDE(SigmaSampler):
    """Data prediction in lambda = -log sigma with fresh noise each step: `eta` scales the noise the step adds
    (1: the reverse SDE's, 0: DPM-Solver++(2M) exactly), `S_noise` its amplitude. Other fields: SigmaSampler."""

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None, pds: PDS | None = None,
                 eta: float = 1.0, S_noise: float = 1.0, name: str | None = None, guidance_scale: float = 0.0,
                 check_finite_every: int = 0):
        super().__init__(steps, speed_up, eps, schedule, corrector, pds, name, guidance_scale, check_finite_every)
        check_number(self.name, "eta", eta, low=0, hint=" (1: the reverse SDE's noise, 0: deterministic)")
        check_number(self.name, "S_noise", S_noise, low=0)
        if eta == 0 and S_noise != 1:
            raise ValueError(f"{self.name}: S_noise {S_noise} has no effect at eta 0 (no noise is added); remove "
                             "S_noise or raise eta")
        self.eta, self.S_noise = float(eta), float(S_noise)

    def score_calls(self, n):
        return n

    def step(self, run, x, sigma, sigma_next):
        return dpmpp_2m_step(run, x, sigma, sigma_next, self.eta, self.S_noise)
