"""EDMHeun: EDM's deterministic sampler (Karras et al. 2022, Alg. 1): Heun steps, Euler on the last; 2N - 1 NFE."""

from __future__ import annotations

from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.solvers import heun_step


class EDMHeun(SigmaSampler):
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1): Heun steps, Euler on the last; 2N - 1 NFE.
    Fields: see SigmaSampler."""

    def score_calls(self, n):
        return 2 * n - 1

    def step(self, run, x, sigma, sigma_next):
        return heun_step(run.denoise, x, sigma, sigma_next)
