"""What every sampler component shares: plain-data configs, one-time field checks, the sampler interface.

A component is built from keyword fields (its constructor signature is its YAML `init_args`, so LightningCLI
refuses any key it does not take) and written back as {'class_path', 'init_args'} by `config()`, which keeps
hyper-parameters plain data (checkpoints load with weights_only=True); `from_config` builds it again, checking
every class path against the allow-list before anything is imported.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import Tensor

from pds_lightning.classpath import allow_list, dotted, import_class, instantiate, is_allowed, refusal
from pds_lightning.sde import SDE, check_step_count, resolve_steps


@dataclass
class SampleResult:
    x: Tensor
    nfe: int
    # How settings were resolved for this run, e.g. {"alpha_auto": AlphaChoice.to_dict()}.
    info: dict = field(default_factory=dict)


class Component:
    """A configurable part: fields are the constructor's keyword arguments, kept as attributes of the same name."""

    def fields(self) -> dict[str, Any]:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    @classmethod
    def from_config(cls, spec: Any, allowed: Iterable[str] = (), what: str = "component"):
        """The component `spec` describes: an instance of this class as it is, or {'class_path', 'init_args'}
        with nested specs (at any depth) built first. A spec may come from an untrusted file: every class path
        in it is checked against `classpath.allow_list(allowed)` before any is imported, and each must name a
        Component (the outer one a subclass of this class) before it is called. ValueError naming `what`."""
        if isinstance(spec, cls):
            return spec
        if not (isinstance(spec, dict) and "class_path" in spec):
            raise ValueError(f"{what} wants a {cls.__name__} component or {{'class_path', 'init_args'}}, got {spec!r}")
        names = allow_list(allowed)
        for path, where in _class_paths(spec, what):
            if not is_allowed(dotted(path), names):
                raise ValueError(refusal(str(path), where, "it is outside the allow-list"))
        return _build(spec, what, cls, names)

    def config(self) -> dict[str, Any]:
        """{'class_path', 'init_args'} of this component, nested components included (plain data)."""
        return {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                "init_args": {k: _plain(v) for k, v in self.fields().items()}}

    def replace(self, **changes: Any):
        """A copy with some fields changed (checked again by the constructor)."""
        return type(self)(**{**{k: copy.deepcopy(v) for k, v in self.fields().items()}, **changes})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.fields().items())})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.fields() == other.fields()

    __hash__ = None


def _plain(value: Any) -> Any:
    return value.config() if isinstance(value, Component) else value


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def _class_paths(value: Any, what: str):
    """(class path, where) of every spec nested in `value` (init_args values, lists), outermost first."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _class_paths(item, f"{what}[{i}]")
    elif _is_spec(value):
        if not isinstance(value["class_path"], str):
            raise ValueError(f"{what} wants a class path string 'package.module.Class', got {value['class_path']!r}")
        yield value["class_path"], what
        init_args = value.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise ValueError(f"{what} init_args must be a mapping, got {type(init_args).__name__}")
        for key, item in init_args.items():
            yield from _class_paths(item, f"{what}.{key}")


def _build(value: Any, what: str, base: type, allowed: tuple[str, ...]) -> Any:
    """`value` with its specs built innermost first (their paths already allowed)."""
    if isinstance(value, (list, tuple)):
        return type(value)(_build(v, f"{what}[{i}]", Component, allowed) for i, v in enumerate(value))
    if not _is_spec(value):
        return value
    import_class(value["class_path"], what, base, allowed)  # a Component subclass, before anything is called
    args = {k: _build(v, f"{what}.{k}", Component, allowed) for k, v in (value.get("init_args") or {}).items()}
    return instantiate({"class_path": value["class_path"], "init_args": args}, what, base, allowed)


def check_number(owner: str, name: str, value: Any, *, low: float | None = None, low_open: bool = False,
                 integer: bool = False, hint: str = "") -> None:
    """ValueError unless `value` is a finite (integer) number >= low (> low when low_open); nan / inf refused."""
    expected = "an integer" if integer else "a finite number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{owner}: {name} must be {expected}{bound}{hint}, got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: unknown {name} {value!r}; choose one of {choices}")


def check_type(owner: str, name: str, value: Any, kinds, what: str) -> None:
    if not isinstance(value, kinds):
        raise ValueError(f"{owner}: {name} wants {what}, got {value!r}")


class Sampler(Component):
    """A sampling method: `__call__(score_fn, sde, shape, *, noise, preconditioner, known) -> SampleResult` and
    its exact score evaluations per sample, `nfe(sde)`.

    Shared fields: `name` (TensorBoard tags, manifests), `guidance_scale` (classifier-free guidance of a
    class-conditional model, a score transform: sampling/guidance.py), `check_finite_every` (stop with
    NonFiniteSampleError when the state turns nan/inf; 0 never checks). `pds`: the PDS component or None.
    """

    pds = None

    def __init__(self, name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        self.name = type(self).__name__.lower() if name is None else str(name)
        check_number(self.name, "guidance_scale", guidance_scale, low=0, hint=" (0: plain conditional)")
        check_number(self.name, "check_finite_every", check_finite_every, low=0, integer=True)
        self.guidance_scale = float(guidance_scale)
        self.check_finite_every = int(check_finite_every)

    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None,
                 dtype=None) -> SampleResult:
        """Samples [B, C, H, W] = `shape` in `dtype` (default float32; a task's known part sets both)."""
        raise NotImplementedError

    def steps_on(self, sde: SDE) -> tuple[int, float]:
        """(N, eps) of this sampler's step budget (`steps`, `speed_up`, `eps`) on `sde`."""
        return resolve_steps(sde.N, sde.default_eps, steps=self.steps, speed_up=self.speed_up, eps=self.eps)

    def nfe(self, sde: SDE) -> int:
        """Exact score evaluations per sample on `sde` (a guided score counts once: one batched call)."""
        raise NotImplementedError

    def check(self, sde: SDE) -> None:
        """A clear error now if this sampler cannot run on `sde` (e.g. too few steps for its DDPM tables)."""
        self.nfe(sde)

    def with_alpha(self, alpha: float | None) -> "Sampler":
        """This sampler at a fixed PDS alpha; None means vanilla (no PDS)."""
        if self.pds is None:
            raise ValueError(f"sampler {self.name!r} has no PDS component to set alpha on")
        return self.replace(pds=None if alpha is None else self.pds.replace(alpha=float(alpha)))

    def check_task(self, known) -> None:
        """A clear error now if this sampler cannot run with the task's known part `known` (None: no task)."""
        if known is not None:
            raise ValueError(f"sampler {self.name!r} ({type(self).__name__}) does not fill in a known part; "
                             "inpainting and colorization run pds_lightning.sampling.PC")


def check_budget(owner: str, count_name: str, count: int | None, speed_up: float, eps: float | None,
                 minimum: int = 1) -> None:
    """The step budget: a count (at most sde.MAX_STEPS), or speed_up (count = int(num_scales / speed_up)), not both;
    eps > 0 or None."""
    if count is not None:
        check_number(owner, count_name, count, low=minimum, integer=True)
        check_step_count(count, f"{owner}: {count_name}", f"lower {count_name}")
    check_number(owner, "speed_up", speed_up, low=0, low_open=True)
    if count is not None and speed_up != 1.0:
        raise ValueError(f"{owner}: give either {count_name} ({count}) or speed_up ({speed_up}), not both")
    if eps is not None:
        check_number(owner, "eps", eps, low=0, low_open=True, hint=" or None (the SDE's default end time)")
