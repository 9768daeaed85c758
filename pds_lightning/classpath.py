"""Import a class named by a dotted path, as configs and command-line options name them."""

from __future__ import annotations

import importlib


def import_class(spec: str, what: str = "class") -> type:
    """'package.module:Class' or 'package.module.Class' -> the class; `what` names it in errors (ValueError)."""
    module, _, name = spec.rpartition(":") if ":" in spec else spec.rpartition(".")
    if not module or not name:
        raise ValueError(f"{what} wants 'package.module:Class' or 'package.module.Class', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {what} {spec!r}: {err}") from err


__all__ = ["import_class"]
