"""Measured choice of alpha (the `Pilot` chooser): a few pilot samples of the model per candidate.

Each candidate's pilot samples are scored by their spectral error against the data statistics. It costs
network evaluations but sees what the surrogate cannot: the trained network's own errors (docs/alpha_auto.md).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from pds_lightning.alpha.surrogate import AlphaChoice, candidates_with_vanilla
from pds_lightning.images import to_unit_range
from pds_lightning.metrics import spectral_error
from pds_lightning.sampling import NonFiniteSampleError, generate
from pds_lightning.sde import SDE


#: Pilot candidates: vanilla and the official family from strong (2) to mild (20) preconditioning.
PILOT_CANDIDATES: tuple[float | None, ...] = (None, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)
#: Pilot seeds are PILOT_SEED + i, far from the seeds users sample, so the choice is not scored on them.
PILOT_SEED = 2 ** 40


def pilot_alpha(sampler, score_fn, sde: SDE, shape, statistics, centered: bool = False,
                device: torch.device | str = "cpu",
                candidates: Sequence[float | None] = PILOT_CANDIDATES) -> AlphaChoice:
    """Measured choice: the Pilot chooser's `samples` images per candidate (same pilot seeds, the model's own
    score) and the candidate whose spectral error against the data statistics is lowest.

    Unlike the surrogate this sees the trained network's errors; it costs len(candidates) * pilot_samples
    samples at the step budget. `centered`: the model samples in [-1, 1].
    """
    if statistics is None or getattr(statistics, "count", 0) <= 0:
        raise ValueError(f"sampler {sampler.name!r} chooses alpha but no data statistics are available")
    seeds = torch.arange(sampler.pds.alpha.samples, device=device) + PILOT_SEED
    candidates = candidates_with_vanilla(candidates)
    table, nfe = {}, 0
    for alpha in candidates:
        key = "vanilla" if alpha is None else alpha
        try:
            result = generate(sampler.with_alpha(alpha), score_fn, sde, seeds, shape, statistics=statistics)
        except NonFiniteSampleError:  # a candidate that diverges at this budget simply loses
            table[key] = math.inf
            continue
        x = to_unit_range(result.x, centered).clamp(0.0, 1.0)
        error = spectral_error(x, statistics.power_mean.to(x.device))
        table[key] = error if math.isfinite(error) else math.inf
        nfe += result.nfe * len(seeds)
    best = min(table, key=table.get)
    N, _ = sampler.steps_on(sde)
    return AlphaChoice(None if best == "vanilla" else best, table[best], table, N, method="pilot",
                       criterion="pilot_spectral_error", nfe=nfe)
