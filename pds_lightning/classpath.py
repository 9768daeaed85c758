"""Import and build classes named by dotted paths, as configs, command-line options and checkpoints name them.

A class path read from a checkpoint or a converter config is untrusted input. Such a name is checked against
an allow-list *before anything is imported* (importing a module runs its code): the project's own classes,
torch.nn, and the names the user adds (`allowed=` of `ScoreModule.load_from_checkpoint`, or the
PDS_LIGHTNING_ALLOWED_CLASSES variable). With `base` given, only a subclass of `base` is then accepted, and
that check runs before anything is called. Configs the user gives to the CLI are the user's own choice and
are not restricted.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Iterable

#: Module prefixes whose classes an untrusted file may name.
TRUSTED = ("pds_lightning", "torch.nn")

#: Comma-separated class paths or module prefixes the user trusts in addition (e.g. "mypkg.nets,other.Net").
ALLOWED_ENV = "PDS_LIGHTNING_ALLOWED_CLASSES"


def allow_list(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names an untrusted file may use: TRUSTED, the PDS_LIGHTNING_ALLOWED_CLASSES entries and `extra`."""
    if isinstance(extra, str):
        extra = [extra]
    env = [name.strip() for name in os.environ.get(ALLOWED_ENV, "").split(",")]
    return TRUSTED + tuple(dotted(name) for name in [*env, *extra] if name and name.strip())


def dotted(spec: str) -> str:
    """'package.module:Class' -> 'package.module.Class' (one spelling for the allow-list)."""
    return spec.strip().replace(":", ".")


def is_allowed(name: str, allowed: Iterable[str]) -> bool:
    """`name` is an entry of `allowed` or lies under one (prefix up to a dot: 'torch.nn' allows
    'torch.nn.Conv2d', not 'torch.nnx.Evil')."""
    return any(name == entry or name.startswith(entry + ".") for entry in allowed)


def import_class(spec: str, what: str = "class", base: type | tuple[type, ...] | None = None,
                 allowed: Iterable[str] | None = None) -> type:
    """'package.module:Class' or 'package.module.Class' -> the class; `what` names it in errors (ValueError).

    With `allowed` (see `allow_list`), a name outside it is refused before its module is imported, and so is a
    class that an allowed module merely re-exports from elsewhere. With `base`, anything but a subclass of
    `base` (a function such as `os.system`, a class such as `subprocess.Popen`) is refused before it is called.
    """
    if not isinstance(spec, str):
        raise ValueError(f"{what} wants a class path string 'package.module.Class', got {type(spec).__name__}")
    module, _, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module or not name:
        raise ValueError(f"{what} wants 'package.module:Class' or 'package.module.Class', got {spec!r}")
    if allowed is not None:
        allowed = tuple(allowed)
        if not is_allowed(dotted(spec), allowed):
            raise ValueError(refusal(spec, what, "it is outside the allow-list"))
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {what} {spec!r}: {err}") from err
    if allowed is not None and not is_allowed(dotted(spec), set(allowed) - set(TRUSTED)):
        # Allowed only as a project / torch.nn name: it must also be defined there, not merely imported there.
        home = getattr(found, "__module__", None) or "?"
        if not is_allowed(f"{home}.{name}", TRUSTED):
            raise ValueError(refusal(spec, what, f"it is defined in {home}, outside the allow-list"))
    if base is not None and not (isinstance(found, type) and issubclass(found, base)):
        bases = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in (base if isinstance(base, tuple) else (base,)))
        raise ValueError(f"refused {what} {spec!r}: it is not a subclass of {bases}; name a class of that kind "
                         "(this check keeps a checkpoint or config from running arbitrary code)")
    return found


def refusal(spec: str, what: str, why: str) -> str:
    """The one-line refusal of an untrusted class path, with the way to allow it."""
    return (f"refused {what} {spec!r} unimported: {why} (a checkpoint or converter config may name classes of "
            f"{' and '.join(TRUSTED)} only); if you trust the file, allow it with "
            f"ScoreModule.load_from_checkpoint(..., allowed=[{dotted(spec)!r}]) or {ALLOWED_ENV}={dotted(spec)}")


def instantiate(spec: Any, what: str = "class", base: type | tuple[type, ...] | None = None,
                allowed: Iterable[str] | None = None) -> Any:
    """Build ``{'class_path': 'pkg.mod.Class', 'init_args': {...}}`` as LightningCLI would, refusing a name
    outside `allowed` before importing it and any class that is not a subclass of `base` before calling it
    (ValueError naming `what`)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise ValueError(f"{what} wants a mapping with 'class_path' (and optional 'init_args'), got {spec!r}")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{what} init_args must be a mapping, got {type(init_args).__name__}")
    cls = import_class(spec["class_path"], what, base, allowed)
    try:
        inspect.signature(cls).bind(**init_args)
    except TypeError as err:  # an unknown or missing argument: say which, and what the class takes
        names = [n for n, p in inspect.signature(cls).parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                       p.KEYWORD_ONLY)]
        raise ValueError(f"{what} init_args do not fit {spec['class_path']}: {err}; it takes {names}") from err
    except ValueError:  # no introspectable signature (a builtin): the call itself will check
        pass
    return cls(**init_args)


def spec_of(obj: Any, what: str = "component") -> dict[str, Any]:
    """``{'class_path', 'init_args'}`` of a component that keeps each constructor argument as an attribute of
    the same name (the inverse of `instantiate`), so it is stored as plain data in a checkpoint."""
    cls = type(obj)
    names = [p.name for p in inspect.signature(cls.__init__).parameters.values()
             if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise ValueError(f"{what} {cls.__qualname__} cannot be stored: it keeps no attribute {missing[0]!r} for its "
                         f"constructor argument of that name; store each argument as self.<name>")
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": {n: getattr(obj, n) for n in names}}


__all__ = ["ALLOWED_ENV", "TRUSTED", "allow_list", "import_class", "instantiate", "is_allowed", "spec_of"]
