"""Import and build classes named by dotted paths, as configs, command-line options and checkpoints name them.

A class path read from a checkpoint or a converter config is untrusted input. Such a name is checked against
an allow-list *before anything is imported* (importing a module runs its code): the project's own classes,
torch.nn, and the names the user adds (`allowed=` of `ScoreModule.load_from_checkpoint`, or the
PDS_LIGHTNING_ALLOWED_CLASSES variable). Every class path of a file is checked, at any depth, before the
first import (`check_class_paths`); `allowing` extends the list while one file's components are built, so a
component that builds its own parts (EDMPrecond's net) sees the same list. With `base` given, only a subclass
of `base` is then accepted, and that check runs before anything is called; init_args are checked against the
constructor's annotations, so a wrong type is named by its field. Configs the user gives to the CLI are the
user's own choice and are not restricted.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import os
import types
import typing
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterable, Iterator

#: Module prefixes whose classes an untrusted file may name.
TRUSTED = ("pds_lightning", "torch.nn")

#: Comma-separated class paths or module prefixes the user trusts in addition (e.g. "mypkg.nets,other.Net").
ALLOWED_ENV = "PDS_LIGHTNING_ALLOWED_CLASSES"

#: Names the user allowed for the file being built (`allowing`), seen by every nested `allow_list()` call.
_ALLOWED_NOW: ContextVar[tuple[str, ...]] = ContextVar("pds_lightning_allowed_classes", default=())


def allow_list(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The names an untrusted file may use: TRUSTED, the PDS_LIGHTNING_ALLOWED_CLASSES entries, the names of an
    enclosing `allowing` and `extra`."""
    env = [name.strip() for name in os.environ.get(ALLOWED_ENV, "").split(",")]
    names = [*env, *_ALLOWED_NOW.get(), *_names(extra)]
    return TRUSTED + tuple(dotted(name) for name in names if name and name.strip())


def _names(extra: Iterable[str]) -> list[str]:
    return [extra] if isinstance(extra, str) else list(extra)


@contextmanager
def allowing(extra: Iterable[str]) -> Iterator[None]:
    """Within the block, `allow_list()` also holds `extra`: what the user passed for one file reaches the
    components that build their own nested parts (EDMPrecond's net), not only the outer ones."""
    token = _ALLOWED_NOW.set(_ALLOWED_NOW.get() + tuple(_names(extra)))
    try:
        yield
    finally:
        _ALLOWED_NOW.reset(token)


def check_class_paths(value: Any, what: str, allowed: Iterable[str]) -> None:
    """Refuse, before anything is imported, any 'class_path' in `value` (mappings and lists at any depth) that
    `allowed` does not hold; `what` names where `value` sits (nested names skip 'init_args', as on the CLI)."""
    if isinstance(value, dict):
        if "class_path" in value:
            path = value["class_path"]
            if not isinstance(path, str):
                raise ValueError(f"{what} wants a class path string 'package.module.Class', got {path!r}")
            if not is_allowed(dotted(path), tuple(allowed)):
                raise ValueError(refusal(path, what, "it is outside the allow-list"))
        for key, item in value.items():
            check_class_paths(item, what if key == "init_args" else f"{what}.{key}", allowed)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_class_paths(item, f"{what}[{i}]", allowed)


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
    outside `allowed` (nested ones included) before importing it, any class that is not a subclass of `base`
    before calling it, and an init_arg of another type than its annotation (ValueError naming `what`)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise ValueError(f"{what} wants a mapping with 'class_path' (and optional 'init_args'), got {spec!r}")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(f"{what} init_args must be a mapping, got {type(init_args).__name__}")
    if allowed is not None:
        check_class_paths(spec, what, allowed)
    cls = import_class(spec["class_path"], what, base, allowed)
    check_init_types(cls, init_args, what)
    try:
        inspect.signature(cls).bind(**init_args)
    except TypeError as err:  # an unknown or missing argument: say which, and what the class takes
        names = [n for n, p in inspect.signature(cls).parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD,
                                                                                       p.KEYWORD_ONLY)]
        raise ValueError(f"{what} init_args do not fit {spec['class_path']}: {err}; it takes {names}") from err
    except ValueError:  # no introspectable signature (a builtin): the call itself will check
        pass
    try:
        return cls(**init_args)
    except (TypeError, ValueError, ArithmeticError) as err:  # a value the types allow but the class does not
        raise ValueError(f"{what} ({spec['class_path']}): {err}") from err


def check_init_types(cls: type, init_args: dict[str, Any], what: str) -> None:
    """ValueError naming the first init_arg whose value does not fit the constructor's annotation (None, bool,
    int, float, str, Literal, and unions, sequences and mappings of them; other annotations are the class's to
    check), so e.g. `nf: 'abc'` is named instead of failing deep inside the constructor."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations (or none): the constructor checks its own arguments
        return
    for name, value in init_args.items():
        if name in hints and not _fits(value, hints[name]):
            raise ValueError(f"{what} init_args: {name} wants {_type_name(hints[name])}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    """`value` is of type `hint`, where `hint` is a plain-data type; True for annotations it cannot judge."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint in (bool, str):
        return isinstance(value, hint)
    if hint in (int, float):  # a bool is no number here; an int is a float, as in JSON and YAML
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else Any
        return all(_fits(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        return isinstance(value, dict)
    return True


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


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


__all__ = ["ALLOWED_ENV", "TRUSTED", "allow_list", "allowing", "check_class_paths", "check_init_types", "import_class",
           "instantiate", "is_allowed", "spec_of"]
