"""Score networks (NCSN++ / DDPM++), the score wrapper and analytic scores."""

from pds_lightning.models.ncsnpp import DDPMpp, NCSNpp
from pds_lightning.models.score import ScoreModel

__all__ = ["NCSNpp", "DDPMpp", "ScoreModel", "GaussianScore", "GaussianMixtureScore"]


def __getattr__(name: str):
    # imported lazily so the networks do not depend on the analytic model's module
    if name in ("GaussianScore", "GaussianMixtureScore"):
        from pds_lightning.models import gaussian

        return getattr(gaussian, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
