"""Import and build classes named by dotted paths, as configs, command-line options and checkpoints name them.

A class path read from a checkpoint or a config is untrusted input: with `base` given, only a subclass of
`base` is accepted, and the check runs before anything is called (importing the named module is the only
effect a refused name can have).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any


def import_class(spec: str, what: str = "class", base: type | tuple[type, ...] | None = None) -> type:
    """'package.module:Class' or 'package.module.Class' -> the class; `what` names it in errors (ValueError).

    With `base`, anything but a subclass of `base` (a function such as `os.system`, a class such as
    `subprocess.Popen`) is refused before it is called.
    """
    if not isinstance(spec, str):
        raise ValueError(f"{what} wants a class path string 'package.module.Class', got {type(spec).__name__}")
    module, _, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module or not name:
        raise ValueError(f"{what} wants 'package.module:Class' or 'package.module.Class', got {spec!r}")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {what} {spec!r}: {err}") from err
    if base is not None and not (isinstance(found, type) and issubclass(found, base)):
        bases = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in (base if isinstance(base, tuple) else (base,)))
        raise ValueError(f"refused {what} {spec!r}: it is not a subclass of {bases}; name a class of that kind "
                         "(this check keeps a checkpoint or config from running arbitrary code)")
    return found


def instantiate(spec: Any, what: str = "class", base: type | tuple[type, ...] | None = None) -> Any:
    """Build ``{'class_path': 'pkg.mod.Class', 'init_args': {...}}`` as LightningCLI would, refusing any class
    that is not a subclass of `base` before it is called (ValueError naming `what`)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise ValueError(f"{what} wants a mapping with 'class_path' (and optional 'init_args'), got {spec!r}")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{what} init_args must be a mapping, got {type(init_args).__name__}")
    cls = import_class(spec["class_path"], what, base)
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


__all__ = ["import_class", "instantiate", "spec_of"]
