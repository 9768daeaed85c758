"""Choosing the preconditioner strength alpha for the step budget (`PDS(alpha=Surrogate() | Pilot())`), above
the samplers.

`resolve_alpha` is the one path from a sampler whose PDS holds an alpha chooser to a sampler the samplers run
(a number, or vanilla): predict, validation (both through ScoreModule.sample) and the benchmarks use it.
`Surrogate` predicts from the data statistics (pure maths); `Pilot` measures on samples of the model.
"""

from __future__ import annotations

from pds_lightning.alpha.pilot import PILOT_CANDIDATES, PILOT_SEED, pilot_alpha
from pds_lightning.alpha.surrogate import (DEFAULT_CANDIDATES, AlphaChoice, GaussianSurrogate, Modes, choose_alpha,
                                           pc_output_moments, predict_w2, predicted_w2)
from pds_lightning.alpha.choosers import Pilot, Surrogate
from pds_lightning.sampling import Sampler
from pds_lightning.sde import SDE

__all__ = ["resolve_alpha", "Surrogate", "Pilot", "choose_alpha", "pilot_alpha", "predict_w2", "predicted_w2", "pc_output_moments",
           "AlphaChoice", "GaussianSurrogate", "Modes", "DEFAULT_CANDIDATES", "PILOT_CANDIDATES", "PILOT_SEED"]


def resolve_alpha(sampler: Sampler, sde: SDE, statistics, *, centered: bool = False, score_fn=None,
                  shape=None, device="cpu") -> tuple[Sampler, dict | None]:
    """(the sampler with a numeric PDS alpha, or vanilla; the choice as a dict for logs and manifests, or None).

    A sampler whose PDS alpha is a number (or that has no PDS) comes back unchanged with None. Otherwise its
    chooser chooses: Pilot samples the model (any sampler that takes PDS) and needs score_fn and the image shape
    [C, H, W] (on `device`); Surrogate (PC and DPMSolverPP2MSDE) needs neither. `centered`: the model samples in
    [-1, 1]. Both may choose vanilla (no PDS) when no alpha beats it.
    """
    pds = sampler.pds
    if pds is None or not pds.chooses_alpha:
        return sampler, None
    if statistics is None:
        raise ValueError(f"sampler {sampler.name!r} chooses alpha but no data statistics are available")
    choice = pds.alpha.choose(sampler, sde, statistics, centered=centered, score_fn=score_fn, shape=shape,
                              device=device)
    return sampler.with_alpha(choice.alpha), choice.to_dict()
