"""DPMSolverPP2M: DPM-Solver++(2M) (Lu et al. 2022): data prediction, multistep in lambda = -log sigma; N NFE."""

from __future__ import annotations

from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.solvers import dpmpp_2m_step


class DPMSolverPP2M(SigmaSampler):
    """DPM-Solver++(2M) (Lu et al. 2022): the 2M SDE step (solvers.dpmpp_2m_step) at eta 0, deterministic; N NFE.
    Fields: see SigmaSampler."""

    def score_calls(self, n):
        return n

    def step(self, run, x, sigma, sigma_next):
        return dpmpp_2m_step(run, x, sigma, sigma_next, eta=0.0)
