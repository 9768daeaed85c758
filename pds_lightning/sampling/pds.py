"""PDS as one component: which filters, how strong (alpha or a chooser), which predictor form, and how the
preconditioner is kept off the known part of inpainting / colorization.

alpha: a number > 1 (official 5; larger is closer to vanilla) or an `AlphaChooser` that picks it for the
step budget; the choosers (Surrogate, Pilot) live in pds_lightning.alpha, above sampling, and
`pds_lightning.alpha.resolve_alpha` turns a chooser into a number before sampling.
predictor: 'official' (the PDS paper's M M^T on the whole drift, which does not keep p_t) or 'consistent'
(drift f - (g^2/2)(I + M M^T) score, keeps p_t); only PC has a predictor to precondition.
restrict (tasks only): 'project' (M on the whole image, known part re-imposed after each update) or
'subspace' (M' = P M on the unknown part only); see sampling/conditional.py.
"""

from __future__ import annotations

import math

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling.base import Component, check_choice

FILTERS = ("freq", "space", "both")
PREDICTOR_FORMS = ("official", "consistent")
RESTRICT_CHOICES = ("project", "subspace")


class AlphaChooser(Component):
    """Picks alpha for a sampler's step budget (implemented above sampling: pds_lightning.alpha)."""

    def choose(self, sampler, sde, statistics, *, centered: bool = False, score_fn=None, shape=None,
               device="cpu"):
        """The choice (an AlphaChoice: `.alpha` a number or None for vanilla) for `sampler` on `sde`."""
        raise NotImplementedError

    def check_sampler(self, sampler) -> None:
        """ValueError now if this chooser cannot choose for `sampler` (called by the sampler when it is built)."""


class PDS(Component):
    """Preconditioned diffusion sampling: filters from the data statistics, strength alpha."""

    def __init__(self, filters: str = "both", alpha: float | AlphaChooser = 5.0, predictor: str = "official",
                 restrict: str = "project"):
        check_choice("PDS", "filters", filters, FILTERS)
        check_choice("PDS", "predictor", predictor, PREDICTOR_FORMS)
        check_choice("PDS", "restrict", restrict, RESTRICT_CHOICES)
        if not isinstance(alpha, AlphaChooser):
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 1:
                raise ValueError(f"PDS: alpha must be a finite number > 1 (official default 5; larger is closer to "
                                 f"vanilla) or an alpha chooser (pds_lightning.alpha.Surrogate / Pilot), got {alpha!r}")
            alpha = float(alpha)
        self.filters, self.alpha, self.predictor, self.restrict = filters, alpha, predictor, restrict

    @property
    def chooses_alpha(self) -> bool:
        return isinstance(self.alpha, AlphaChooser)

    @property
    def consistent(self) -> bool:
        """The consistent predictor form (keeps p_t) rather than the official one."""
        return self.predictor == "consistent"

    def preconditioner(self, statistics, sampler_name: str = "sampler") -> Preconditioner:
        """M from an object with freq_statistic() / space_statistic() (alpha must be a number by now)."""
        if self.chooses_alpha:
            raise ValueError(f"sampler {sampler_name!r} chooses alpha with {type(self.alpha).__name__}, which "
                             "generate does not run; resolve it first with pds_lightning.alpha.resolve_alpha "
                             "(ScoreModule.sample does this for you), or give alpha a number")
        if statistics is None:
            raise ValueError(f"sampler {sampler_name!r} uses PDS (filters {self.filters!r}) but no data statistics "
                             "are available; fit computes them (data.stats.num_images > 0), a converted model gets "
                             "them from `pds-lightning convert-diffusers ... --statistics-from IMAGE_FOLDER` or "
                             "`convert-score-sde ... --freq-stat F.npy --space-stat S.npy`; or drop the pds component")
        freq = statistics.freq_statistic() if self.filters in ("freq", "both") else None
        space = statistics.space_statistic() if self.filters in ("space", "both") else None
        return Preconditioner.from_statistics(freq, space, self.alpha)
