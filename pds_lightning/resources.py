"""The files the package reads at run time (embedded data, configs, classifier weights): one resolver.

They live once, at the top of the source tree (``data/``, ``configs/``, ``benchmarks/assets/``). A wheel
carries copies under ``pds_lightning/_shipped/<kind>/`` (setup.py's build step copies exactly ``SHIPPED``),
read with ``importlib.resources``; a source checkout or editable install reads the top-level folders.
No project imports: setup.py loads this file on its own to know what to copy.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
from pathlib import Path

# kind -> (folder in the source tree, glob patterns of the files that ship, relative to that folder)
SHIPPED = {
    "data": ("data", ("*.npz",)),
    "configs": ("configs", ("*.yaml", "score_sde/*.yaml")),
    "assets": ("benchmarks/assets", ("digit_classifier.pt",)),
}
SHIPPED_PACKAGE_DIR = "_shipped"  # inside the installed package
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout's root when the package is not from a wheel

_extracted = contextlib.ExitStack()  # zip imports only: files extracted for the life of the process
atexit.register(_extracted.close)


def _check_kind(kind: str) -> None:
    if kind not in SHIPPED:
        raise ValueError(f"unknown resource kind {kind!r}; use one of {sorted(SHIPPED)}")


def installed_from_wheel() -> bool:
    """True when the package carries its own copies (``_shipped``), i.e. it was installed from a wheel."""
    return importlib.resources.files(__package__).joinpath(SHIPPED_PACKAGE_DIR).is_dir()


def resource_dir(kind: str) -> Path:
    """The folder holding the shipped files of `kind` ('data', 'configs' or 'assets')."""
    _check_kind(kind)
    if installed_from_wheel():
        folder = importlib.resources.files(__package__).joinpath(SHIPPED_PACKAGE_DIR, kind)
        if isinstance(folder, Path):
            return folder
        return _extracted.enter_context(importlib.resources.as_file(folder))  # e.g. imported from a zip
    return SOURCE_ROOT / SHIPPED[kind][0]


def resource_path(kind: str, name: str) -> Path:
    """The path of one shipped file, e.g. ``resource_path('data', 'mnist_32.npz')`` (it may not exist)."""
    return resource_dir(kind) / name


def shipped_files(root: Path, kind: str) -> list[Path]:
    """The files of `kind` below `root` that ship (`root` is the source folder or the installed copy)."""
    _check_kind(kind)
    return sorted({p for pattern in SHIPPED[kind][1] for p in root.glob(pattern) if p.is_file()})


def shipped_configs() -> list[str]:
    """Names of the shipped configs: 'demo', 'patches', 'score_sde/ve_cifar10_ncsnpp_continuous', ..."""
    root = resource_dir("configs")
    return [p.relative_to(root).with_suffix("").as_posix() for p in shipped_files(root, "configs")]


def config_path(name: str) -> Path:
    """The shipped config called `name` (as listed by `shipped_configs`; '.yaml' optional); ValueError if none."""
    name = str(name).removesuffix(".yaml")
    if name not in shipped_configs():
        raise ValueError(f"no shipped config named {name!r}; the shipped configs are: "
                         + ", ".join(shipped_configs()) + " (`pds-lightning configs` lists them)")
    return resource_dir("configs") / f"{name}.yaml"


__all__ = ["SHIPPED", "config_path", "installed_from_wheel", "resource_dir", "resource_path", "shipped_configs",
           "shipped_files"]
