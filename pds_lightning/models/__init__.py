"""Score networks (NCSN++ / DDPM++), the score wrapper and analytic scores."""

from pds_lightning.models.ncsnpp import DDPMpp, NCSNpp

__all__ = ["NCSNpp", "DDPMpp"]
