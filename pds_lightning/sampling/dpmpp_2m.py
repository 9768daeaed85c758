"""DPMSolverPP2M: DPM-Solver++(2M) (Lu et al. 2022): data prediction, multistep in lambda = -log sigma; N NFE."""

from __future__ import annotations

from pds_lightning.sampling.sigma import SigmaSampler


class DPMSolverPP2M(SigmaSampler):
    """DPM-Solver++(2M) (Lu et al. 2022): data prediction, multistep in lambda = -log sigma; N NFE. Fields: see SigmaSampler."""

    method = "dpmpp_2m"
