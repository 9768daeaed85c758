"""The alpha choosers a PDS component takes instead of a number (`PDS(alpha=Surrogate())`); each chooses itself
(`choose`), and `resolve_alpha` runs the one a sampler holds."""

from __future__ import annotations

from pds_lightning.alpha.pilot import pilot_alpha
from pds_lightning.alpha.surrogate import AlphaChoice, choose_alpha
from pds_lightning.sampling import PC, DPMSolverPP2MSDE
from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.pds import AlphaChooser
from pds_lightning.statistics import ImageStatistics


class Surrogate(AlphaChooser):
    """alpha predicted from the data statistics by the Gaussian surrogate (no network calls), for the samplers it
    models exactly: PC and DPMSolverPP2MSDE (its PDS-shaped noise and corrector)."""

    def __init__(self):
        pass

    def choose(self, sampler, sde, statistics, *, centered=False, score_fn=None, shape=None,
               device="cpu") -> AlphaChoice:
        # The surrogate is a small float64 CPU computation, whatever device the model runs on.
        cpu = [getattr(statistics, k).detach().cpu() for k in ("power_mean", "mean", "sq_mean")]
        return choose_alpha(ImageStatistics.from_moments(statistics.count, *cpu), sde, sampler, centered=centered)

    def check_sampler(self, sampler) -> None:
        if not isinstance(sampler, (PC, DPMSolverPP2MSDE)):
            raise ValueError(f"{sampler.name}: the Surrogate alpha chooser models PC and DPMSolverPP2MSDE, not "
                             f"{type(sampler).__name__}; give PDS alpha Pilot (measured on the model) or a number")


class Pilot(AlphaChooser):
    """alpha measured: `samples` pilot images of the model per candidate, scored by their spectral error."""

    def __init__(self, samples: int = 16):
        check_number("Pilot", "samples", samples, low=2, integer=True, hint=" (a spectrum is estimated from them)")
        self.samples = int(samples)

    def choose(self, sampler, sde, statistics, *, centered=False, score_fn=None, shape=None,
               device="cpu") -> AlphaChoice:
        if score_fn is None or shape is None:
            raise ValueError("the Pilot alpha chooser samples the model; pass score_fn and shape")
        return pilot_alpha(sampler, score_fn, sde, shape, statistics, centered=centered, device=device)
