"""Choosing the preconditioner strength alpha for the step budget (`alpha: auto`), above the samplers.

`resolve_alpha` is the one path from settings with `alpha: auto` to settings the samplers run (a number,
or vanilla): predict, validation (both through ScoreModule.sample) and the benchmarks use it.
`surrogate` predicts from the data statistics (pure maths); `pilot` measures on samples of the model.
"""

from __future__ import annotations

from pds_lightning.alpha.pilot import PILOT_CANDIDATES, PILOT_SEED, pilot_alpha
from pds_lightning.alpha.surrogate import (DEFAULT_CANDIDATES, AlphaChoice, GaussianSurrogate, Modes, choose_alpha,
                                           pc_output_moments, predict_w2, predicted_w2)
from pds_lightning.sampling.settings import SamplerSettings, with_alpha
from pds_lightning.sde import SDE
from pds_lightning.statistics import ImageStatistics

__all__ = ["resolve_alpha", "choose_alpha", "pilot_alpha", "predict_w2", "predicted_w2", "pc_output_moments",
           "AlphaChoice", "GaussianSurrogate", "Modes", "DEFAULT_CANDIDATES", "PILOT_CANDIDATES", "PILOT_SEED"]


def resolve_alpha(settings: SamplerSettings, sde: SDE, statistics, *, centered: bool = False, score_fn=None,
                  shape=None, device="cpu") -> tuple[SamplerSettings, dict | None]:
    """(settings with a numeric alpha, the choice as a dict for logs and manifests, or None).

    Settings without `alpha: auto` come back unchanged with None. Otherwise alpha is chosen by
    `settings.auto_method` (a vanilla choice becomes preconditioner 'none'): 'pilot' samples the model and
    needs score_fn and the image shape [C, H, W] (on `device`); 'surrogate' needs neither. `centered`: the
    model samples in [-1, 1].
    """
    if settings.alpha != "auto":
        return settings, None
    if statistics is None:
        raise ValueError(f"sampler {settings.name!r} has alpha: auto but no data statistics are available")
    if settings.auto_method == "pilot":
        if score_fn is None or shape is None:
            raise ValueError("auto_method: pilot samples the model; pass score_fn and shape")
        choice = pilot_alpha(settings, score_fn, sde, shape, statistics, centered=centered, device=device)
        return with_alpha(settings, choice.alpha), choice.to_dict()
    # The surrogate is a small float64 CPU computation, whatever device the model runs on.
    cpu = [getattr(statistics, k).detach().cpu() for k in ("power_mean", "mean", "sq_mean")]
    choice = choose_alpha(ImageStatistics.from_moments(statistics.count, *cpu), sde, settings, centered=centered)
    return with_alpha(settings, choice.alpha), choice.to_dict()
