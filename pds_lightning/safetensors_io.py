""".safetensors files of a ScoreModule: its state dict as plain tensors plus one JSON of what rebuilds it.

A model shared this way needs no pickle: the file holds tensors and a header string ``pds_lightning`` with
``{"format", "net", "sde", "hyper_parameters"}`` (net / sde as class_path + init_args; the other ScoreModule
hyper-parameters as plain JSON). Reading refuses any other header key, any other JSON key, and values that
are not plain JSON; the class paths are checked when the module is built (only nn.Module / SDE subclasses,
`pds_lightning.classpath`). Optimizer state and step counts are not part of it: it is for sampling and
fine-tuning, not for resuming a run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from pds_lightning.fileio import write_atomic

FORMAT = "pds_lightning.safetensors/1"
HEADER = "pds_lightning"  # the one metadata entry of the file
KEYS = ("format", "net", "sde", "hyper_parameters")
SPEC_KEYS = {"class_path", "init_args"}


def _plain(value: Any, where: str) -> Any:
    """`value` if it is JSON data (None, bool, int, finite float, str, lists and string-keyed dicts of them)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} is {value}; .safetensors metadata holds finite numbers only")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where} is a {type(value).__name__}, not plain JSON data; it cannot go into .safetensors metadata")


def _spec(value: Any, name: str) -> dict[str, Any]:
    if not (isinstance(value, dict) and set(value) <= SPEC_KEYS and isinstance(value.get("class_path"), str)
            and isinstance(value.get("init_args", {}), dict)):
        raise ValueError(f"{name} must be {{'class_path': str, 'init_args': mapping}}, got {value!r}; only models "
                         "built from class specs (fit, convert-*) can be written as .safetensors")
    return value


def metadata(hyper_parameters: dict[str, Any]) -> dict[str, str]:
    """The file's header entry for a module with these hyper-parameters (net / sde class specs among them)."""
    hparams = {k: v for k, v in hyper_parameters.items() if not k.startswith("_")}  # Lightning's own entries
    net, sde = (_spec(hparams.pop(name, None), name) for name in ("net", "sde"))
    body = {"format": FORMAT, "net": net, "sde": sde, "hyper_parameters": hparams}
    return {HEADER: json.dumps(_plain(body, "metadata"), allow_nan=False, sort_keys=True)}


def weights_bytes(state_dict: dict[str, torch.Tensor], hyper_parameters: dict[str, Any]) -> bytes:
    """The .safetensors content of `state_dict` and the JSON of `hyper_parameters`, built in memory so that
    the file is written by `fileio` (safetensors' own writer leaves mode 0o600 and raises its own errors)."""
    from safetensors.torch import save

    header = metadata(hyper_parameters)
    tensors, seen = {}, set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"state dict entry {name} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu().contiguous()
        # safetensors refuses tensors sharing memory (e.g. frozen weights common to net and ema_net): copy those
        key = value.untyped_storage().data_ptr()
        tensors[name] = value.clone() if key in seen and value.numel() else value
        seen.add(key)
    return save(tensors, metadata=header)


def checkpoint_weights_bytes(checkpoint: dict[str, Any]) -> bytes:
    """The .safetensors content of a pds_lightning (Lightning) checkpoint dict: its state dict and hyper-parameters."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError("not a pds_lightning checkpoint (no 'state_dict'); train one with fit or convert one first")
    return weights_bytes(checkpoint["state_dict"], checkpoint.get("hyper_parameters") or {})


def save_weights(state_dict: dict[str, torch.Tensor], hyper_parameters: dict[str, Any],
                 path: str | os.PathLike) -> Path:
    """Write `state_dict` and the JSON of `hyper_parameters` to `path` atomically; returns the path."""
    path = Path(path)
    write_atomic(path, weights_bytes(state_dict, hyper_parameters))
    return path


def save_checkpoint_weights(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the .safetensors of a pds_lightning checkpoint dict to `path` atomically; returns the path."""
    path = Path(path)
    write_atomic(path, checkpoint_weights_bytes(checkpoint))
    return path


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, hyper-parameters with net / sde class specs) of a file written by `save_weights`.

    The safetensors format holds tensors only; the header is checked key by key before anything is built."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            state_dict = {name: fh.get_tensor(name) for name in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} as .safetensors: {err}; the file is truncated or not a weights file") from err
    if set(header) != {HEADER}:
        raise ValueError(f"{path} has metadata keys {sorted(header)}, expected only {HEADER!r}; it was not written "
                         "by pds_lightning (`pds-lightning export`)")
    try:
        body = json.loads(header[HEADER])
    except ValueError as err:
        raise ValueError(f"{path}: the {HEADER!r} metadata is not JSON ({err})") from err
    if not isinstance(body, dict) or set(body) != set(KEYS):
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise ValueError(f"{path}: the {HEADER!r} metadata has keys {got}, expected {list(KEYS)}")
    if body["format"] != FORMAT:
        raise ValueError(f"{path} has format {body['format']!r}; this version reads {FORMAT!r}")
    if not isinstance(body["hyper_parameters"], dict):
        raise ValueError(f"{path}: hyper_parameters must be a mapping")
    hparams = dict(body["hyper_parameters"])
    if {"net", "sde"} & set(hparams):
        raise ValueError(f"{path}: net / sde belong at the top of the metadata, not in hyper_parameters")
    hparams.update(net=_spec(body["net"], "net"), sde=_spec(body["sde"], "sde"))
    return state_dict, hparams
