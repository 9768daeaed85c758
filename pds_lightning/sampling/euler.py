"""Euler: Euler in sigma-space (DDIM with eta 0, DPM-Solver++(1)); N NFE."""

from __future__ import annotations

from pds_lightning.sampling.sigma import SigmaSampler


class Euler(SigmaSampler):
    """Euler in sigma-space, x' = x + (sigma' - sigma) (x - D) / sigma: DDIM (eta 0) and DPM-Solver++(1); N NFE.
    Fields: see SigmaSampler."""

    def score_calls(self, n):
        return n

    def step(self, run, x, sigma, sigma_next):
        return x + (sigma_next - sigma) * (x - run.denoise(x, sigma)) / sigma
