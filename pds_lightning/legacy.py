"""The sampler formats of older checkpoints and configs, translated into sampler components in ONE place.

- The flat settings (one dict, 27 fields for six methods): `sampler_from_flat`. A field the chosen method does
  not use is refused unless it still has its default, so an old checkpoint loads and samples the same bytes
  while a setting that never did anything is an error, not a silent no-op. Only `sampler_from_hparam` (what a
  checkpoint's `sampler` hyper-parameter goes through) and `flat_config_error` (an old YAML config) read it.
- The components of the previous round, whose step count was `pc_steps` (PC) or `levels` (sigma-space
  samplers): now `steps` (`renamed_steps`).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

from pds_lightning.alpha.choosers import Pilot, Surrogate
from pds_lightning.sampling import (ALD, Component, EDMHeun, EDMStochastic, PC, PDS, AncestralSampling, DPMSolverPP2M,
                                    DPMSolverPP2MSDE, Euler, EulerMaruyama, Karras, Langevin, ProbabilityFlowODE,
                                    Restart, ReverseDiffusion, Sampler, SDEGrid)

#: Values of `SamplerSettings.preconditioner`: which PDS filters to build ('none' is vanilla).
PRECONDITIONER_CHOICES = ("none", "freq", "space", "both")
METHODS = ("pc", "ode", "edm_heun", "edm_stochastic", "dpmpp_2m", "euler")
PREDICTORS = {"reverse_diffusion": ReverseDiffusion, "euler_maruyama": EulerMaruyama,
              "ancestral_sampling": AncestralSampling, "none": None}
CORRECTORS = ("langevin", "ald", "none")
SIGMA_METHODS = {"edm_heun": EDMHeun, "edm_stochastic": EDMStochastic, "dpmpp_2m": DPMSolverPP2M, "euler": Euler}
#: The sampler components whose fields a partial config override may name.
COMPONENT_SAMPLERS = (PC, ProbabilityFlowODE, DPMSolverPP2MSDE, Restart, *SIGMA_METHODS.values())


@dataclass
class SamplerSettings:
    """The flat form of older versions (checkpoints, configs, scripts): constructing one translates it
    (`to_sampler`), so a field that does not apply is refused at once. What the fields meant, defaults: the official PDS PC sampler (reverse diffusion + Langevin,
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
        self.to_sampler()  # the translation checks every field once

    def to_sampler(self) -> Sampler:
        return sampler_from_flat(asdict(self))

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULTS = {f.name: f.default for f in fields(SamplerSettings)}
#: The fields each method reads (besides name, guidance_scale, check_finite_every, the step budget, PDS).
USED = {
    "pc": {"predictor", "corrector", "snr", "n_corrector_steps", "step_size", "denoise", "pds_predictor"},
    "ode": {"denoise"},
    **{m: {"schedule", "rho", "sigma_min", "sigma_max", "ode_corrector", "snr", "n_corrector_steps", "step_size"}
       for m in SIGMA_METHODS},
}
USED["edm_stochastic"] = USED["edm_stochastic"] | {"S_churn", "S_tmin", "S_tmax", "S_noise"}
COMMON = {"name", "method", "n_steps", "speed_up", "eps", "guidance_scale", "check_finite_every", "preconditioner",
          "alpha", "auto_method", "pilot_samples"}


def sampler_from_flat(flat: dict) -> Sampler:
    """The sampler component a flat settings dict (an old checkpoint's `sampler` hyper-parameter) describes.

    ValueError naming the key for a field SamplerSettings never had, an unknown method / predictor / corrector,
    or a field with a non-default value that the chosen method, predictor or corrector does not use."""
    unknown = sorted(set(flat) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"flat sampler settings: unknown key {unknown[0]!r}; the flat form has {sorted(DEFAULTS)}")
    s = {**DEFAULTS, **flat}
    method = s["method"]
    if method not in METHODS:
        raise ValueError(f"flat sampler settings: unknown method {method!r}; choose one of {METHODS}")
    used = set(COMMON) | USED[method]
    if method == "pc":
        if s["predictor"] not in PREDICTORS:
            raise ValueError(f"flat sampler settings: unknown predictor {s['predictor']!r}; choose one of {sorted(PREDICTORS)}")
        if s["corrector"] not in CORRECTORS:
            raise ValueError(f"flat sampler settings: unknown corrector {s['corrector']!r}; choose one of {CORRECTORS}")
        corrector_on = s["corrector"] != "none" and s["n_corrector_steps"] != 0
        if not corrector_on:
            used -= {"snr", "step_size"} if s["corrector"] != "none" else {"snr", "step_size", "n_corrector_steps"}
        elif s["corrector"] == "ald":
            used -= {"step_size"}
    elif method in SIGMA_METHODS:
        if s["ode_corrector"] not in ("none", "langevin"):
            raise ValueError(f"flat sampler settings: unknown ode_corrector {s['ode_corrector']!r}; choose 'none' or 'langevin'")
        if s["ode_corrector"] == "none":
            used -= {"snr", "n_corrector_steps", "step_size"}
        if s["schedule"] == "sde":
            used -= {"rho", "sigma_min", "sigma_max"}
        elif s["schedule"] != "karras":
            raise ValueError(f"flat sampler settings: unknown schedule {s['schedule']!r}; choose 'karras' or 'sde'")
    if s["preconditioner"] == "none":
        used -= {"alpha", "auto_method", "pilot_samples", "pds_predictor"}
    elif s["alpha"] != "auto":
        used -= {"auto_method", "pilot_samples"}
    elif s["auto_method"] != "pilot":
        used -= {"pilot_samples"}
    for key in DEFAULTS:
        if key not in used and s[key] != DEFAULTS[key] and not _same_number(s[key], DEFAULTS[key]):
            raise ValueError(f"flat sampler settings: {key}={s[key]!r} does not apply to method {method!r} with these "
                             f"settings (it would be ignored){_why(key, s)}; remove it")
    pds = _pds(s)
    common = dict(name=s["name"], guidance_scale=s["guidance_scale"], check_finite_every=s["check_finite_every"])
    budget = dict(speed_up=s["speed_up"], eps=s["eps"])
    if method == "pc":
        predictor = PREDICTORS[s["predictor"]]
        corrector = None
        if s["corrector"] != "none" and s["n_corrector_steps"] != 0:
            corrector = (Langevin(s["snr"], s["n_corrector_steps"], s["step_size"]) if s["corrector"] == "langevin"
                         else ALD(s["snr"], s["n_corrector_steps"]))
        return PC(steps=s["n_steps"], **budget, predictor=None if predictor is None else predictor(),
                  corrector=corrector, pds=pds, denoise=s["denoise"], **common)
    if method == "ode":
        if pds is not None:
            raise ValueError("flat sampler settings: method 'ode' cannot use a PDS preconditioner (the preconditioned "
                             "flow is not the model's probability-flow ODE); set preconditioner: none or method: pc")
        return ProbabilityFlowODE(steps=s["n_steps"], **budget, denoise=s["denoise"], **common)
    schedule = SDEGrid() if s["schedule"] == "sde" else Karras(s["rho"], s["sigma_min"], s["sigma_max"])
    corrector = None
    if s["ode_corrector"] == "langevin" and s["n_corrector_steps"] != 0:
        corrector = Langevin(s["snr"], s["n_corrector_steps"], s["step_size"])
    extra = {k: s[k] for k in ("S_churn", "S_tmin", "S_tmax", "S_noise")} if method == "edm_stochastic" else {}
    return SIGMA_METHODS[method](steps=s["n_steps"], **budget, schedule=schedule, corrector=corrector, pds=pds,
                           **extra, **common)


def _why(key: str, s: dict) -> str:
    """Where a refused field does apply."""
    if key in ("alpha", "auto_method", "pilot_samples", "pds_predictor") and s["preconditioner"] == "none":
        return ": it needs a preconditioner ('freq', 'space' or 'both')"
    if key in ("S_churn", "S_tmin", "S_tmax", "S_noise"):
        return ": it belongs to method 'edm_stochastic'"
    if key in ("rho", "sigma_min", "sigma_max") and s["method"] in SIGMA_METHODS:
        return ": it sets the 'karras' schedule"
    if key in ("snr", "n_corrector_steps", "step_size") and s["method"] in SIGMA_METHODS:
        return ": it sets the corrector of ode_corrector 'langevin'"
    if key in ("schedule", "rho", "sigma_min", "sigma_max", "ode_corrector"):
        return f": it belongs to the sigma-space methods {sorted(SIGMA_METHODS)}"
    if key in ("predictor", "corrector") or (key == "denoise" and s["method"] in SIGMA_METHODS):
        return ": it belongs to method 'pc'" + (" (and denoise to 'ode')" if key == "denoise" else "")
    return ""


def _same_number(a, b) -> bool:
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and a == b


def _pds(s: dict) -> PDS | None:
    if s["preconditioner"] not in PRECONDITIONER_CHOICES:
        raise ValueError(f"flat sampler settings: unknown preconditioner {s['preconditioner']!r}; choose one of "
                         f"{PRECONDITIONER_CHOICES}")
    if s["preconditioner"] == "none":
        return None
    alpha = s["alpha"]
    if alpha == "auto":
        if s["auto_method"] not in ("surrogate", "pilot"):
            raise ValueError(f"flat sampler settings: unknown auto_method {s['auto_method']!r}; choose 'surrogate' "
                             "or 'pilot'")
        alpha = Pilot(s["pilot_samples"]) if s["auto_method"] == "pilot" else Surrogate()
    elif isinstance(alpha, str):
        raise ValueError(f"flat sampler settings: alpha must be a number > 1 or 'auto', got {alpha!r}")
    return PDS(filters=s["preconditioner"], alpha=alpha, predictor=s["pds_predictor"])


def sampler_from_hparam(value: Any, allowed: Iterable[str] = ()) -> Sampler:
    """The sampler a checkpoint's `sampler` hyper-parameter holds: a component, its {'class_path', 'init_args'}
    (built by `Sampler.from_config`: every nested class path checked against the allow-list with `allowed` before
    it is imported, a checkpoint being untrusted; a previous-round `pc_steps` / `levels` read as `steps`), or an
    old checkpoint's flat dict (`sampler_from_flat`). The one reader of the flat form besides old configs."""
    if isinstance(value, dict) and "class_path" not in value:
        return sampler_from_flat(value)
    return Sampler.from_config(renamed_steps(value), allowed, "model.sampler")


#: The step count's names in the previous round's components (now `steps` everywhere).
OLD_STEP_NAMES = ("pc_steps", "levels")


def renamed_steps(spec: Any) -> Any:
    """A project sampler spec with its previous-round step count (`pc_steps` / `levels`) named `steps`."""
    if not (isinstance(spec, dict) and isinstance(spec.get("class_path"), str)
            and spec["class_path"].startswith("pds_lightning.sampling") and isinstance(spec.get("init_args"), dict)):
        return spec
    args = dict(spec["init_args"])
    for old in OLD_STEP_NAMES:
        if old in args and "steps" not in args:
            args["steps"] = args.pop(old)
    return {**spec, "init_args": args}


def old_step_name(spec: Any) -> str | None:
    """The previous round's step-count key (`pc_steps` / `levels`) a config's sampler spec or flag still uses."""
    if isinstance(spec, str):  # a command-line flag such as --model.sampler.pc_steps
        last = spec.rpartition(".")[2]
        return last if last in OLD_STEP_NAMES and ".sampler." in spec else None
    args = spec.get("init_args", spec) if isinstance(spec, dict) else None
    return next((k for k in OLD_STEP_NAMES if isinstance(args, dict) and k in args), None)


def old_step_name_error(old: str, where: str) -> str:
    return f"{where} names the step count {old!r}, which is now 'steps' for every sampler; rename it to steps"


def short_config(component: Component) -> dict:
    """{'class_path', 'init_args'} with only the fields that differ from the class defaults (nested too)."""
    defaults = {k: p.default for k, p in inspect.signature(type(component).__init__).parameters.items()}
    args = {k: short_config(v) if isinstance(v, Component) else v for k, v in component.fields().items()
            if not (k == "name" and v == type(component).__name__.lower()) and not _is_default(v, defaults.get(k))}
    config = {"class_path": component.config()["class_path"]}
    return {**config, "init_args": args} if args else config


def _is_default(value, default) -> bool:
    return value == default and type(value) is type(default) or (value is None and default is None)


def is_flat(value: Any) -> bool:
    """A config's `model.sampler` in the flat form: keys of the flat settings that no sampler component takes,
    or a predictor / corrector / schedule named by a string (a dict holding only component fields is a partial
    override of the class given before it, which jsonargparse merges)."""
    if not isinstance(value, dict) or "class_path" in value or "init_args" in value:
        return False
    fields = set().union(*(inspect.signature(cls.__init__).parameters for cls in COMPONENT_SAMPLERS))
    named = any(isinstance(value.get(k), str) for k in ("predictor", "corrector", "schedule"))
    return named or bool(set(value) & (set(DEFAULTS) - fields))


def flat_config_error(flat: dict, where: str) -> str:
    """The one-line error for an old config's flat sampler dict at `where`, with its component form."""
    try:
        component = json.dumps(short_config(sampler_from_flat(flat)))
    except ValueError as err:
        return f"{where} is a flat sampler dict of older versions, which configs no longer take, and it is invalid: {err}"
    return (f"{where} is a flat sampler dict of older versions, which configs no longer take; write it as the "
            f"component {component}")
