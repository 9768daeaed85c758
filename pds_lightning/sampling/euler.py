"""Euler: Euler in sigma-space (DDIM with eta 0, DPM-Solver++(1)); N NFE."""

from __future__ import annotations

from pds_lightning.sampling.sigma import SigmaSampler


class Euler(SigmaSampler):
    """Euler in sigma-space (DDIM with eta 0, DPM-Solver++(1)); N NFE. Fields: see SigmaSampler."""

    method = "euler"
