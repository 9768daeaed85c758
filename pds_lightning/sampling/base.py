"""What every sampler component shares: plain-data configs, one-time field checks, the sampler interface.

A component is built from keyword fields (its constructor signature is its YAML `init_args`, so LightningCLI
refuses any key it does not take) and written back as {'class_path', 'init_args'} by `config()`, which keeps
hyper-parameters plain data (checkpoints load with weights_only=True).
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from pds_lightning.sde import SDE, check_step_count


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


def check_number(owner: str, name: str, value: Any, *, low: float | None = None, low_open: bool = False,
                 integer: bool = False, hint: str = "") -> None:
    """ValueError unless `value` is a finite (integer) number >= low (> low when low_open); nan / inf refused."""
    kind = "an integer" if integer else "a finite number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{owner}: {name} must be {kind}{bound}{hint}, got {value!r}")


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

    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None) -> SampleResult:
        raise NotImplementedError

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

    def known_unsupported(self, known) -> None:
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
