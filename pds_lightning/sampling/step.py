"""What every predictor and corrector update holds: the SDE, the score, the PDS preconditioner M and the noise."""

from __future__ import annotations

from torch import Tensor

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sde import SDE


class Step:
    """Base of the PC updates: `update(x, t) -> (x, x_mean)`; drifts get M M^T, noise draws get M."""

    def __init__(self, sde: SDE, score_fn, preconditioner: Preconditioner, noise):
        self.sde = sde
        self.score_fn = score_fn
        self.preconditioner = preconditioner
        self.noise = noise

    def mz(self, like: Tensor) -> Tensor:
        """M z for a fresh standard-normal draw z shaped like `like`."""
        return self.preconditioner.noise(self.noise.noise(like))

    def update(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError
