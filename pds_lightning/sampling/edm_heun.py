"""EDMHeun: EDM's deterministic sampler (Karras et al. 2022, Alg. 1): Heun steps, Euler on the last; 2N - 1 NFE."""

from __future__ import annotations

from pds_lightning.sampling.sigma import SigmaSampler


class EDMHeun(SigmaSampler):
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1): Heun steps, Euler on the last; 2N - 1 NFE. Fields: see SigmaSampler."""

    method = "edm_heun"
