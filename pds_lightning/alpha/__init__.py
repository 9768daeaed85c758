"""Choosing the preconditioner strength alpha for the step budget (`PDS(alpha=Surrogate() | Pilot())`), above
the samplers.

`resolve_alpha` is the one path from a sampler whose PDS holds an alpha chooser to a sampler the samplers run
(a number, or vanilla): predict, validation (both through ScoreModule.sample) and the benchmarks use it.
`Surrogate` predicts from the data statistics (pure maths); `Pilot` measures on samples of the model.
"""

from __future__ import annotations

from typing import Any, Callable

from pds_lightning.alpha.pilot import PILOT_CANDIDATES, PILOT_SEED, pilot_alpha
from pds_lightning.alpha.surrogate import (DEFAULT_CANDIDATES, AlphaChoice, GaussianSurrogate, Modes, choose_alpha,
                                           pc_output_moments, predict_w2, predicted_w2)
from pds_lightning.alpha.choosers import Pilot, Surrogate
from pds_lightning.sampling import Sampler
from pds_lightning.sde import SDE

__all__ = ["resolve_alpha", "AlphaCache", "log_alpha_choice", "Surrogate", "Pilot", "choose_alpha", "pilot_alpha", "predict_w2", "predicted_w2", "pc_output_moments",
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


class AlphaCache:
    """The alpha choices of one model, one per (sampler settings, training step): a pilot samples the model, so
    a choice is made once per step, not per batch, and earlier steps' choices are dropped (the weights have
    changed since)."""

    def __init__(self):
        self.choices: dict[tuple[str, int], dict] = {}

    def get(self, settings: Sampler, step: int, choose: Callable[[Sampler], dict]) -> dict:
        """The choice of `settings` at training `step`: `choose(settings)`'s, called only the first time."""
        key = (repr(settings), int(step))
        if key not in self.choices:
            choice = choose(settings)
            self.choices = {k: v for k, v in self.choices.items() if k[1] == key[1]}
            self.choices[key] = choice
        return self.choices[key]


def log_alpha_choice(experiment: Any, name: str, choice: dict, step: int) -> None:
    """TensorBoard scalars of an alpha choice of sampler `name`: alpha (0 = vanilla) and its criterion value."""
    experiment.add_scalar(f"alpha_auto/{name}/alpha", choice["alpha"] or 0.0, step)
    experiment.add_scalar(f"alpha_auto/{name}/{choice['criterion']}", choice["value"], step)
