"""DPMSolverPP2MSDE: DPM-Solver++(2M) SDE (Lu et al. 2022), the stochastic multistep solver; N NFE."""

from __future__ import annotations

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import PDS
from pds_lightning.sampling.schedules import Karras, Schedule
from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.stochastic import dpmpp_2m_sde, dpmpp_2m_sde_nfe


class DPMSolverPP2MSDE(SigmaSampler):
    """Data prediction in lambda = -log sigma with fresh noise each step: `eta` scales the noise the step adds
    (1: the reverse SDE's, 0: DPM-Solver++(2M) exactly), `S_noise` its amplitude. Other fields: SigmaSampler."""

    method = "dpmpp_2m_sde"

    def __init__(self, levels: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None, pds: PDS | None = None,
                 eta: float = 1.0, S_noise: float = 1.0, name: str | None = None, guidance_scale: float = 0.0,
                 check_finite_every: int = 0):
        super().__init__(levels, speed_up, eps, schedule, corrector, pds, name, guidance_scale, check_finite_every)
        check_number(self.name, "eta", eta, low=0, hint=" (1: the reverse SDE's noise, 0: deterministic)")
        check_number(self.name, "S_noise", S_noise, low=0)
        self.eta, self.S_noise = float(eta), float(S_noise)

    def engine(self):
        return dpmpp_2m_sde

    def levels_nfe(self, levels: int, ode_corrector: str, n_corrector_steps: int) -> int:
        return dpmpp_2m_sde_nfe(levels, ode_corrector, n_corrector_steps)

    def extra_kwargs(self) -> dict:
        return dict(eta=self.eta, S_noise=self.S_noise)
