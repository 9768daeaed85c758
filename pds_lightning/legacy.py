"""YAML-friendly sampler settings and `generate`, the one entry point that turns seeds into samples.

`generate` runs settings whose alpha is a number; `alpha: auto` is chosen above this package, by
`pds_lightning.alpha.resolve_alpha`, before sampling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling.correctors import CORRECTORS, STEP_SIZE_MODES
from pds_lightning.sampling.guidance import guided_score
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sampling.predictors import PDS_PREDICTOR_CHOICES, PREDICTORS, predictor_class
from pds_lightning.sampling.samplers import SAMPLERS, SampleResult
from pds_lightning.sampling.solvers import MIN_STEPS, ODE_CORRECTORS, SCHEDULES, SOLVERS
from pds_lightning.sde import SDE, resolve_steps

#: Values of `SamplerSettings.preconditioner`: which PDS filters to build ('none' is vanilla).
PRECONDITIONER_CHOICES = ("none", "freq", "space", "both")
#: Values of `SamplerSettings.auto_method` (how pds_lightning.alpha chooses `alpha: auto`).
AUTO_METHOD_CHOICES = ("surrogate", "pilot")
#: Every sampling method by its name: the PC and probability-flow samplers and the sigma-space solvers.
METHODS = {**SAMPLERS, **SOLVERS}


@dataclass
class SamplerSettings:
    """One sampling configuration. Defaults: the official PDS PC sampler (reverse diffusion + Langevin,
    snr 0.16, alpha 5) at the model's full step count, with per-sample Langevin step sizes.

    Steps: `n_steps`, or `speed_up` (N = int(num_scales / speed_up), eps = default_eps * speed_up);
    `eps` overrides the end time. `preconditioner`: which PDS filters to use ('none' is vanilla).
    `alpha: auto` picks alpha for the step budget by `auto_method`: 'surrogate' (predicted from the data
    statistics, no network calls) or 'pilot' (measured on `pilot_samples` samples per candidate).

    Fast samplers in sigma-space (sampling/solvers.py), `method`: 'edm_heun', 'edm_stochastic', 'dpmpp_2m',
    'euler'. For them `n_steps` is the number of noise levels N (>= 2) and NFE per sample is 2N - 1 (Heun
    methods) or N (dpmpp_2m, euler), plus n_corrector_steps (N - 1) with `ode_corrector: langevin` (the PDS
    corrector between steps; the only way a preconditioner enters them). `schedule`: 'karras' (rho,
    sigma_min/sigma_max; None = sigma(eps), sigma(T) of the SDE) or 'sde' (the SDE's own time grid).
    edm_stochastic: S_churn, S_tmin, S_tmax (None = no upper bound), S_noise as in EDM.

    `pds_predictor`: 'official' (the PDS paper's predictor, M M^T on the whole drift: it does not keep the
    target p_t, and biases preconditioned modes even at large N) or 'consistent' (drift f - (g^2/2)
    (I + M M^T) score with noise g M z: keeps p_t). The PDS Langevin corrector keeps p_t either way.

    `guidance_scale` w: classifier-free guidance of a class-conditional model (sampling/guidance.py),
    s_uncond + (1 + w)(s_cond - s_uncond); 0 is the plain conditional score. Used when classes are given.
    """

    name: str = "pc"
    method: str = "pc"
    predictor: str = "reverse_diffusion"
    corrector: str = "langevin"
    snr: float = 0.16
    n_corrector_steps: int = 1
    n_steps: int | None = None
    speed_up: float = 1.0
    eps: float | None = None
    preconditioner: str = "none"
    alpha: float | str = 5.0
    pds_predictor: str = "official"
    auto_method: str = "surrogate"
    pilot_samples: int = 16
    denoise: bool = True
    step_size: str = "sample"
    check_finite_every: int = 0
    guidance_scale: float = 0.0
    # ---- fast samplers in sigma-space (solvers.py); ignored by 'pc' and 'ode' --------------------------
    schedule: str = "karras"
    rho: float = 7.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    S_churn: float = 0.0
    S_tmin: float = 0.0
    S_tmax: float | None = None
    S_noise: float = 1.0
    ode_corrector: str = "none"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown sampling method {self.method!r}; choose one of {sorted(METHODS)}")
        self._check_solver_settings()
        if self.predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {self.predictor!r}; choose one of {sorted(PREDICTORS)}")
        if self.corrector not in CORRECTORS:
            raise ValueError(f"unknown corrector {self.corrector!r}; choose one of {sorted(CORRECTORS)}")
        if self.preconditioner not in PRECONDITIONER_CHOICES:
            raise ValueError(f"unknown preconditioner {self.preconditioner!r}; choose one of {PRECONDITIONER_CHOICES}")
        if self.method == "pc":
            predictor_class(self.predictor, self.pds_predictor)  # unknown variant, or no consistent form
        elif self.pds_predictor not in PDS_PREDICTOR_CHOICES:
            raise ValueError(f"unknown pds_predictor {self.pds_predictor!r}; choose one of {PDS_PREDICTOR_CHOICES}")
        if self.step_size not in STEP_SIZE_MODES:
            raise ValueError(f"unknown step_size {self.step_size!r}; choose 'sample' (per-sample norms) or "
                             "'batch' (official batch-mean rule)")
        if isinstance(self.alpha, str) and self.alpha != "auto":
            raise ValueError(f"alpha must be a number > 1 or 'auto' (chosen for the step budget), got {self.alpha!r}")
        if self.auto_method not in AUTO_METHOD_CHOICES:
            raise ValueError(f"unknown auto_method {self.auto_method!r}; choose 'surrogate' (predicted from the "
                             "data statistics) or 'pilot' (measured on a few samples of the model)")
        if self.pilot_samples < 2:
            raise ValueError(f"pilot_samples must be >= 2 (a spectrum is estimated from them), got {self.pilot_samples}")
        if self.alpha == "auto":
            if self.method != "pc" or self.preconditioner == "none":
                raise ValueError("alpha: auto needs method: pc and a preconditioner ('freq', 'space' or 'both')")
        elif isinstance(self.alpha, bool) or not math.isfinite(self.alpha) or self.alpha <= 1:
            raise ValueError(f"alpha must be a finite number > 1 (official default 5; larger is closer to "
                             f"vanilla), got {self.alpha!r}")
        if self.method == "ode" and self.preconditioner != "none":
            raise ValueError("method 'ode' cannot use a PDS preconditioner (the preconditioned flow is not the "
                             "model's probability-flow ODE); set preconditioner: none or method: pc")
        if isinstance(self.guidance_scale, bool) or not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be a finite number >= 0 (0: plain conditional), got {self.guidance_scale!r}")
        if self.snr <= 0:
            raise ValueError(f"snr must be > 0, got {self.snr}")
        if self.n_corrector_steps < 0 or self.check_finite_every < 0:
            raise ValueError("n_corrector_steps and check_finite_every must be >= 0")
        if self.n_steps is not None and self.speed_up != 1.0:
            raise ValueError(f"give either n_steps ({self.n_steps}) or speed_up ({self.speed_up}), not both")
        if self.n_steps is not None and self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {self.n_steps}")
        if not self.speed_up > 0:
            raise ValueError(f"speed_up must be > 0, got {self.speed_up}")

    def _check_solver_settings(self) -> None:
        """Checks of the sigma-space solver fields (solvers.py)."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.ode_corrector not in ODE_CORRECTORS:
            raise ValueError(f"unknown ode_corrector {self.ode_corrector!r}; choose one of {ODE_CORRECTORS}")
        if isinstance(self.rho, bool) or not math.isfinite(self.rho) or self.rho <= 0:
            raise ValueError(f"rho must be a finite number > 0 (EDM default 7), got {self.rho!r}")
        for key in ("sigma_min", "sigma_max"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0 or None (from the SDE), got {value!r}")
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min >= self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if self.schedule == "sde" and (self.sigma_min is not None or self.sigma_max is not None):
            raise ValueError("sigma_min/sigma_max set the 'karras' schedule; with schedule: sde leave them None")
        if not self.S_churn >= 0:
            raise ValueError(f"S_churn must be >= 0 (0: deterministic), got {self.S_churn}")
        if not self.S_noise > 0:
            raise ValueError(f"S_noise must be > 0 (EDM uses 1 to 1.007), got {self.S_noise}")
        if not self.S_tmin >= 0 or (self.S_tmax is not None and not self.S_tmax >= self.S_tmin):
            raise ValueError(f"need 0 <= S_tmin <= S_tmax (None: no upper bound), got {self.S_tmin}, {self.S_tmax}")
        if self.method not in SOLVERS:
            if self.ode_corrector != "none":
                raise ValueError(f"ode_corrector applies to methods {sorted(SOLVERS)}; method {self.method!r} "
                                 "has its own corrector setting")
            return
        if self.n_steps is not None and self.n_steps < MIN_STEPS:
            raise ValueError(f"method {self.method!r} needs n_steps >= {MIN_STEPS} noise levels, got {self.n_steps}")
        if self.preconditioner != "none" and self.ode_corrector == "none":
            raise ValueError(f"method {self.method!r} uses a PDS preconditioner only in its Langevin corrector; "
                             "set ode_corrector: langevin, or preconditioner: none")

    def steps_for(self, sde: SDE) -> tuple[int, float]:
        """(N, eps) this setting gives on `sde`; a clear error if speed_up leaves fewer than 1 step, or if
        a step that reads the DDPM alphas 1 - beta_i (VP, sub-VP) would find one <= 0 at this N."""
        N, eps = resolve_steps(sde.N, sde.default_eps, n_steps=self.n_steps, speed_up=self.speed_up, eps=self.eps)
        users = self.ddpm_table_users(sde)
        n_min = sde.min_ddpm_steps()
        if users and N < n_min:
            raise ValueError(
                f"{type(sde).__name__} with beta_max {sde.beta_1:g} cannot be sampled in {N} steps by "
                f"{' and '.join(users)}: they read the DDPM alphas 1 - beta_i, which reach 1 - beta_max / N = "
                f"{1 - sde.beta_1 / N:.3g} <= 0 (square roots of negative numbers, division by zero). Use at "
                f"least {n_min} steps (n_steps >= {n_min}, or speed_up <= {sde.N / n_min:.4g}), or predictor: "
                "euler_maruyama with corrector: none, which works at any step count")
        return N, eps

    def ddpm_table_users(self, sde: SDE) -> list[str]:
        """The steps of this setting that read `sde`'s DDPM alphas 1 - beta_i: the DDPM predictors on VP,
        and the Langevin/ALD correctors (a_t) on VP and sub-VP. Empty on VE."""
        if self.method != "pc":
            return []
        users = []
        if self.predictor in ("reverse_diffusion", "ancestral_sampling") and sde.ddpm_discretisation:
            users.append(f"the {self.predictor} predictor")
        if self.corrector in ("langevin", "ald") and self.n_corrector_steps > 0 and sde.min_ddpm_steps() > 1:
            users.append(f"the {self.corrector} corrector (a_t)")
        return users

    def preconditioner_from(self, statistics) -> Preconditioner | None:
        """The PDS preconditioner from an object with freq_statistic()/space_statistic(), or None."""
        if self.preconditioner == "none":
            return None
        if statistics is None:
            raise ValueError(f"sampler {self.name!r} asks for preconditioner {self.preconditioner!r} but no data "
                             "statistics are available; compute them (ImageStatistics) or use preconditioner: none")
        freq = statistics.freq_statistic() if self.preconditioner in ("freq", "both") else None
        space = statistics.space_statistic() if self.preconditioner in ("space", "both") else None
        return Preconditioner.from_statistics(freq, space, self.alpha)

    def sampler_kwargs(self) -> dict:
        """Keyword settings of the chosen sampler."""
        common = dict(n_steps=self.n_steps, speed_up=self.speed_up, eps=self.eps, denoise=self.denoise,
                      check_finite_every=self.check_finite_every)
        if self.method == "ode":
            return common
        if self.method in SOLVERS:
            solver = dict(common, schedule=self.schedule, rho=self.rho, sigma_min=self.sigma_min,
                          sigma_max=self.sigma_max, ode_corrector=self.ode_corrector, snr=self.snr,
                          n_corrector_steps=self.n_corrector_steps, step_size=self.step_size)
            solver.pop("denoise")  # they end at sigma = 0
            if self.method == "edm_stochastic":
                solver.update(S_churn=self.S_churn, S_tmin=self.S_tmin, S_tmax=self.S_tmax, S_noise=self.S_noise)
            return solver
        return dict(common, predictor=self.predictor, corrector=self.corrector, snr=self.snr,
                    n_corrector_steps=self.n_corrector_steps, step_size=self.step_size,
                    pds_predictor=self.pds_predictor)

    def to_dict(self) -> dict:
        return asdict(self)


def generate(settings: SamplerSettings, score_fn, sde: SDE, seeds: Sequence[int] | Tensor, shape,
             statistics=None, classes: Sequence[int] | Tensor | None = None) -> SampleResult:
    """One sample per seed, shape [len(seeds), C, H, W]; each depends only on its seed, its class and `settings`.

    `classes` (one per seed) samples a class-conditional `score_fn(x, t, class_labels)` (its `num_classes`
    attribute names the null class), guided by `settings.guidance_scale`; None samples it unconditionally.

    `shape` is the image shape [C, H, W] (or the full [B, C, H, W]); the device is the seeds' device
    (CPU for a list). `statistics` is an ImageStatistics-like object or None. `settings.alpha` must be a
    number: resolve 'auto' first with pds_lightning.alpha.resolve_alpha.
    """
    if settings.alpha == "auto":
        raise ValueError(f"sampler {settings.name!r} has alpha: 'auto', which generate does not choose; resolve "
                         "it first with pds_lightning.alpha.resolve_alpha(settings, sde, statistics, ...) "
                         "(ScoreModule.sample does this for you), or give alpha a number")
    seeds_list = seeds.flatten().tolist() if isinstance(seeds, Tensor) else [int(s) for s in seeds]
    device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        if shape[0] != len(seeds_list):
            raise ValueError(f"shape {shape} has batch {shape[0]} but {len(seeds_list)} seeds were given")
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"shape must be the image shape [C, H, W], got {shape}")
    settings.steps_for(sde)  # fail early, with the step-count message
    preconditioner = settings.preconditioner_from(statistics)
    if preconditioner is not None:
        preconditioner = preconditioner.to(device)
    score_fn = _class_score(settings, score_fn, classes, len(seeds_list), device)
    sampler = METHODS[settings.method]
    return sampler(score_fn, sde, (len(seeds_list),) + shape, noise=SeededNoise(seeds_list, device),
                   preconditioner=preconditioner, **settings.sampler_kwargs())


def _class_score(settings: SamplerSettings, score_fn, classes, n: int, device: torch.device):
    """`score_fn` itself without classes, else its guided score for one class per seed."""
    if classes is None:
        if settings.guidance_scale != 0:
            raise ValueError(f"sampler {settings.name!r} has guidance_scale {settings.guidance_scale} but no classes "
                             "were given; pass one class per seed (predict: data.classes) or set guidance_scale: 0")
        return score_fn
    num_classes = getattr(score_fn, "num_classes", None)
    if not num_classes:
        raise ValueError("classes were given but the model is not class-conditional (no num_classes); train one "
                         "with model.net.init_args.num_classes, or sample without classes")
    labels = torch.as_tensor(classes, dtype=torch.long, device=device).flatten()
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} classes for {n} seeds; give one class per seed")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"class {int(labels[bad][0])} is out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1}); fix data.classes")
    return guided_score(score_fn, labels, settings.guidance_scale, null_class=num_classes)


def with_alpha(settings: SamplerSettings, alpha: float | None) -> SamplerSettings:
    """`settings` at a fixed alpha; None means vanilla (preconditioner 'none')."""
    if alpha is None:
        return replace(settings, preconditioner="none", alpha=5.0)
    return replace(settings, alpha=float(alpha))
