"""The preconditioning components of a sampler's `pds` slot. PDS: which filters, how strong (alpha or a chooser),
which predictor form, and how the preconditioner is kept off the known part of inpainting / colorization.

alpha: a number > 1 (official 5; larger is closer to vanilla) or an `AlphaChooser` that picks it for the
step budget; the choosers (Surrogate, Pilot) live in pds_lightning.alpha, above sampling, and
`pds_lightning.alpha.resolve_alpha` turns a chooser into a number before sampling.
predictor: 'official' (the PDS paper's M M^T on the whole drift, which does not keep p_t) or 'consistent'
(drift f - (g^2/2)(I + M M^T) score, keeps p_t); only PC has a predictor to precondition.
restrict (tasks only): 'project' (M on the whole image, known part re-imposed after each update) or
'subspace' (M' = P M on the unknown part only); see sampling/conditional.py.
UnresolvedBands: a frequency preconditioner B(sigma) that follows the noise level, for DPMSolverPP2MSDE's noise
(docs/pds_stochastic.md).
"""

from __future__ import annotations

import math

from pds_lightning.preconditioner import Preconditioner, UnresolvedBandsGram
from pds_lightning.sampling.base import Component, check_choice, check_number
from pds_lightning.statistics import mode_variance

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


class Preconditioning(Component):
    """What a sampler's `pds` slot takes: builds its preconditioner from the data statistics."""

    #: Whether an alpha chooser must be resolved first (pds_lightning.alpha.resolve_alpha).
    chooses_alpha = False

    def preconditioner(self, statistics, sampler_name: str = "sampler", centered: bool = False):
        """The preconditioner for statistics of [0, 1] images; `centered`: the model sees 2 x - 1."""
        raise NotImplementedError

    def check_sigma_sampler(self, sampler, corrector) -> None:
        """ValueError now if the sigma-space `sampler` (with `corrector`) cannot use this preconditioning."""
        raise NotImplementedError


def no_statistics(sampler_name: str, what: str) -> ValueError:
    return ValueError(f"sampler {sampler_name!r} uses {what} but no data statistics are available; fit computes "
                      "them (data.stats.num_images > 0), a converted model gets them from `pds-lightning "
                      "convert-diffusers ... --statistics-from IMAGE_FOLDER` or `convert-score-sde ... --freq-stat "
                      "F.npy --space-stat S.npy`; or drop the pds component")


class PDS(Preconditioning):
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

    def preconditioner(self, statistics, sampler_name: str = "sampler", centered: bool = False) -> Preconditioner:
        """M from an object with freq_statistic() / space_statistic() (alpha must be a number by now). The official
        filters are normalised statistics of the [0, 1] images, the same for either model space (`centered`)."""
        if self.chooses_alpha:
            raise ValueError(f"sampler {sampler_name!r} chooses alpha with {type(self.alpha).__name__}, which "
                             "generate does not run; resolve it first with pds_lightning.alpha.resolve_alpha "
                             "(ScoreModule.sample does this for you), or give alpha a number")
        if statistics is None:
            raise no_statistics(sampler_name, f"PDS (filters {self.filters!r})")
        freq = statistics.freq_statistic() if self.filters in ("freq", "both") else None
        space = statistics.space_statistic() if self.filters in ("space", "both") else None
        return Preconditioner.from_statistics(freq, space, self.alpha)

    def check_sigma_sampler(self, sampler, corrector) -> None:
        sampler.check_pds(self, corrector)
        if self.predictor != "official" or self.restrict != "project":
            raise ValueError(f"{sampler.name}: PDS predictor / restrict apply to the PC sampler; "
                             f"{type(sampler).__name__} has no predictor to precondition and fills in no known part")
        if self.chooses_alpha:
            self.alpha.check_sampler(sampler)


class UnresolvedBands(Preconditioning):
    """Noise where the data is not yet resolved: B(sigma) = F^-1 diag(b(sigma)) F with b_k = scale / (1 +
    (lam_k / sigma^2)^sharpness) from the data's Fourier mode variances lam_k (preconditioner.unresolved_gains).
    In DPMSolverPP2MSDE each mode gets eta b_k(sigma): about eta `scale` on the modes below the noise, the ODE on
    the resolved ones; the marginals p_sigma are kept for any B(sigma) >= 0, no extra NFE (docs/pds_stochastic.md)."""

    def __init__(self, scale: float = 4.0, sharpness: float = 4.0):
        check_number("UnresolvedBands", "scale", scale, low=0, low_open=True,
                     hint=" (0 adds no noise: that is DPMSolverPP2M)")
        check_number("UnresolvedBands", "sharpness", sharpness, low=0, low_open=True)
        self.scale, self.sharpness = float(scale), float(sharpness)

    def preconditioner(self, statistics, sampler_name: str = "sampler", centered: bool = False) -> UnresolvedBandsGram:
        """B(sigma) from the mode variances of the data in model space (`centered`: 2 x - 1)."""
        if statistics is None:
            raise no_statistics(sampler_name, "UnresolvedBands")
        lam = mode_variance(statistics, centered, who="UnresolvedBands", advice="; use PDS(filters='freq')")
        return UnresolvedBandsGram(lam, self.scale, self.sharpness)

    def check_sigma_sampler(self, sampler, corrector) -> None:
        if not sampler.shapes_noise:
            raise ValueError(f"{sampler.name}: UnresolvedBands shapes the noise a solver integrates per Fourier mode, "
                             f"which only DPMSolverPP2MSDE does ({type(sampler).__name__} has none to shape); use "
                             "DPMSolverPP2MSDE, or PDS with a Langevin corrector")
        if corrector is not None:
            raise ValueError(f"{sampler.name}: UnresolvedBands shapes the solver's own noise and has no Langevin "
                             "corrector form here; leave corrector out, or use PDS(filters='freq') with it")
