"""ScoreModule's checkpoints: reading one untrusted (weights_only, one-line errors, the file's compile options
checked), rebuilding the module from it (class paths allow-listed before any import), the Lightning checkpoint
layout every converter writes, and the `.safetensors` export read back in that layout, so every entry point (fit
resume, validate, test, predict, likelihood) takes either."""

from __future__ import annotations

import inspect
import io
import os
import pickle
from pathlib import Path
from typing import Any, Iterable

import torch
from lightning.fabric.utilities.cloud_io import _load as pl_load
from lightning.fabric.utilities.cloud_io import get_filesystem
from torch import nn

from pds_lightning.classpath import allow_list, allowing, check_class_paths, instantiate
from pds_lightning.fileio import first_line, write_atomic
from pds_lightning.likelihood import LikelihoodSettings
from pds_lightning.losses import Loss
from pds_lightning.legacy import sampler_from_hparam
from pds_lightning.models.checkpoint import check_finite_weights
from pds_lightning.optim import Optimizer
from pds_lightning.safetensors_io import load_weights
from pds_lightning.sde import SDE

#: Settings dataclasses among the hyper-parameters, stored as plain dicts (checkpoints load with weights_only);
#: the sampler component is stored as {'class_path', 'init_args'} (Sampler.config()).
SETTINGS_HPARAMS = {"likelihood": LikelihoodSettings}

#: torch.compile's own backends, the only ones a checkpoint may name: another backend is code the file picks.
BUILTIN_COMPILE_BACKENDS = ("inductor", "eager", "aot_eager")
#: torch.compile keywords a checkpoint may set, with their plain types; its `options` (inductor settings, which
#: can name a compiler program to run) and any other keyword come only from the user.
FILE_COMPILE_KEYWORDS = {"fullgraph": (bool,), "dynamic": (bool, type(None)), "backend": (str,),
                         "mode": (str, type(None)), "disable": (bool,)}


class CheckpointError(ValueError):
    """A checkpoint could not be loaded (truncated, not a pds_lightning checkpoint, or holding objects that are
    not plain data)."""


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The dict a checkpoint file holds (a `.safetensors` export: its state_dict and hyper_parameters), read
    without running code, with one-line errors that say what is wrong and what to do.

    torch.load(weights_only=True) refuses any pickled object other than tensors and plain containers *before*
    building it, so a crafted file cannot run code while it is read."""
    if not get_filesystem(path).exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path (--ckpt_path)")
    if str(path).endswith(".safetensors"):  # `export` / convert-* --safetensors: tensors + checked JSON, no pickle
        state_dict, hparams = load_weights(path)
        return {"state_dict": state_dict, "hyper_parameters": hparams}
    try:
        checkpoint = pl_load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} was refused unread: it holds pickled objects other than tensors and plain "
            f"containers ({first_line(err)}), and unpickling them could run code. Use a checkpoint written by "
            "pds_lightning (or convert-score-sde) from a source you trust") from err
    except Exception as err:  # truncated zip, wrong format: torch raises RuntimeError, EOFError, ...
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(err).__name__}: {first_line(err)}); the file is truncated or "
            "not a PyTorch checkpoint: copy it again or use another checkpoint (e.g. the previous one)") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        held = (f"a dict with keys {sorted(map(str, checkpoint))[:8]}" if isinstance(checkpoint, dict)
                else f"a {type(checkpoint).__name__}")
        raise CheckpointError(f"{path} is not a pds_lightning checkpoint: it holds {held}, no 'state_dict' mapping; "
                              "use a checkpoint of fit or convert-* (convert a score_sde checkpoint with "
                              "`pds-lightning convert-score-sde` first)")
    if not isinstance(checkpoint.get("hyper_parameters") or {}, dict):
        raise CheckpointError(f"{path}: 'hyper_parameters' is a {type(checkpoint['hyper_parameters']).__name__}, "
                              "not a mapping; it is not a pds_lightning checkpoint")
    return checkpoint


def check_compile(value: Any, where: str) -> None:
    """Refuse a `compile` hyper-parameter read from a file unless it is true / false or a mapping of the
    torch.compile keywords in FILE_COMPILE_KEYWORDS with plain values and a built-in backend: the file must not
    pick code to run at compile time. The user's own choice (load_from_checkpoint(..., compile=...), or
    --model.compile) is not restricted."""
    fix = "pass compile=... to load_from_checkpoint (or --model.compile) yourself if you want it"
    if isinstance(value, bool):
        return
    if not isinstance(value, dict):
        raise ValueError(f"{where}: compile takes true/false or torch.compile options (a mapping), got {value!r}")
    for key, option in value.items():
        if key not in FILE_COMPILE_KEYWORDS:
            raise ValueError(f"{where}: compile option {key!r} is refused from a file (it may take only "
                             f"{sorted(FILE_COMPILE_KEYWORDS)}); {fix}")
        if not isinstance(option, FILE_COMPILE_KEYWORDS[key]):
            raise ValueError(f"{where}: compile option {key}={option!r} is not of the plain type torch.compile takes")
        if key == "backend" and option not in BUILTIN_COMPILE_BACKENDS:
            raise ValueError(f"{where}: compile backend {option!r} is refused from a file (only torch's built-in "
                             f"{list(BUILTIN_COMPILE_BACKENDS)}); {fix}")


def module_from_hyper_parameters(cls: type, net: nn.Module | dict[str, Any] | None = None,
                             sde: SDE | dict[str, Any] | None = None, *, allowed: Iterable[str] = (),
                             **hparams: Any):
    """Build a ScoreModule (`cls`) from plain hyper-parameters, as a checkpoint or config holds them: `net` / `sde` as
    {'class_path', 'init_args'} (a checkpoint is untrusted: only classes of pds_lightning, torch.nn and
    `allowed` are imported, and only subclasses of nn.Module / SDE built; see classpath) or as instances;
    `sampler` as a component, its {'class_path', 'init_args'}, or an old flat dict."""
    specs = {}
    for name, value, base in (("net", net, nn.Module), ("sde", sde, SDE)):
        if value is None:
            raise ValueError(f"no {name} to build: the checkpoint does not name its model.{name} (the module was "
                             f"built in Python from instances); pass {name}=... to load_from_checkpoint")
        if isinstance(value, dict):
            specs[name] = value
    # `allowed` reaches every nested spec, also those a component builds itself (EDMPrecond's net)
    with allowing(allowed):
        trusted = allow_list()
        for key, value in {"net": net, "sde": sde, **hparams}.items():  # every class path, before any import
            check_class_paths(value, f"model.{key}", trusted)
        net = instantiate(net, "model.net", nn.Module, trusted) if isinstance(net, dict) else net
        sde = instantiate(sde, "model.sde", SDE, trusted) if isinstance(sde, dict) else sde
        if isinstance(hparams.get("loss"), dict):
            hparams["loss"] = instantiate(hparams["loss"], "model.loss", Loss, trusted)
        if isinstance(hparams.get("optimizer"), dict):
            hparams["optimizer"] = instantiate(hparams["optimizer"], "model.optimizer", Optimizer, trusted)
        for key, settings_type in SETTINGS_HPARAMS.items():
            if isinstance(hparams.get(key), dict):
                try:
                    hparams[key] = settings_type(**hparams[key])
                except TypeError as err:
                    raise ValueError(f"model.{key}: {err}") from err
        if hparams.get("sampler") is not None:  # a component, its config, or an old checkpoint's flat dict
            hparams["sampler"] = sampler_from_hparam(hparams["sampler"], allowed)
        model = cls(net=net, sde=sde, **hparams)
    model.set_class_specs(specs.get("net"), specs.get("sde"))
    return model

def load_module(cls: type, checkpoint_path: str | os.PathLike, map_location: Any = None, hparams_file: Any = None,
            strict: bool | None = None, allowed: Iterable[str] = (), **kwargs: Any):
    """The ScoreModule (`cls`) a checkpoint of `fit` or `convert-*` holds (or its `.safetensors` export), in one call and
    with no config.

    The file is read with weights_only=True (no pickled objects run); net, sde, loss and sampler (nested parts
    included) are rebuilt from their recorded class paths, each refused before import unless it names a class
    of pds_lightning or torch.nn, or a name in `allowed` / PDS_LIGHTNING_ALLOWED_CLASSES (class paths or
    module prefixes you trust), and refused before it runs unless it is a subclass of nn.Module / SDE / Loss /
    Sampler. The file's `compile` is refused unless plain (`check_compile`). `kwargs` override the saved
    hyper-parameters (e.g. sampler=PC(steps=10)), or supply net / sde when none is recorded.
    """
    if hparams_file is not None:
        raise ValueError("ScoreModule.load_from_checkpoint takes no hparams_file; pass hyper-parameters as "
                         "keyword arguments (e.g. sampler=...)")
    checkpoint = read_checkpoint(checkpoint_path)  # also a `.safetensors` export (export, convert-* --safetensors)
    check_finite_weights(checkpoint["state_dict"], f"checkpoint {checkpoint_path}")
    names = inspect.signature(cls.__init__).parameters
    saved = checkpoint.get("hyper_parameters") or {}
    hparams = {k: v for k, v in saved.items() if k in names and k != "self"}  # drops Lightning's _class_path etc.
    if "compile" not in kwargs:  # the file's choice, unlike the caller's
        check_compile(hparams.get("compile", False), f"{checkpoint_path}: model.compile")
    hparams.update(kwargs)
    model = module_from_hyper_parameters(cls, allowed=allowed, **hparams)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()


LOOPS = ("fit_loop", "validate_loop", "test_loop", "predict_loop")  # the loops a Lightning checkpoint restores


def loop_states(step: int) -> dict[str, Any]:
    """Lightning's progress of all four loops (fit, validate, test, predict), as a checkpoint of `fit` holds
    them: every entry point restores its own loop from the checkpoint, so one missing loop breaks that entry
    point. The fit loop is set to ``step`` optimizer steps, so a resumed run continues the step count
    (schedules, logging) instead of restarting it at 0."""
    import lightning

    trainer = lightning.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, accelerator="cpu", devices=1)
    states = {name: getattr(trainer, name).state_dict() for name in LOOPS}
    fit = states["fit_loop"]
    total = fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]["total"]
    total["ready"] = total["completed"] = step
    fit["epoch_loop.state_dict"]["_batches_that_stepped"] = step
    return states


def lightning_checkpoint(state_dict: dict[str, torch.Tensor], hparams: dict[str, Any], *, step: int = 0,
                         optimizer: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Lightning checkpoint of ScoreModule (`state_dict`, plain-data `hparams`) after `step` optimizer steps;
    the one layout every converter writes, so every entry point reads converted checkpoints alike."""
    import lightning

    out = {
        "state_dict": state_dict,
        "global_step": step,
        "epoch": 0,
        "pytorch-lightning_version": lightning.__version__,
        "optimizer_states": [optimizer] if optimizer is not None else [],
        "lr_schedulers": [],  # none: ScoreModule's warm-up is a function of global_step
        "loops": loop_states(step),
        "hyper_parameters": hparams,
    }
    out.update(extra or {})
    return out


def checkpoint_bytes(checkpoint: dict[str, Any]) -> memoryview:
    """The file content of a checkpoint (torch.save's zip), serialised in memory so that the file itself is
    written by `fileio`: whole or not at all, the umask's mode, errors naming the target."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getbuffer()


def save_checkpoint(checkpoint: dict[str, Any], output_path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically (converters and fit's checkpoints alike); returns its path."""
    output_path = Path(output_path)
    write_atomic(output_path, checkpoint_bytes(checkpoint))
    return output_path


def as_lightning_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """`checkpoint` ({'state_dict', 'hyper_parameters'} at least) with Lightning's keys filled in where it has
    none (no 'pytorch-lightning_version'): a `.safetensors` export and the project's older checkpoints, saved as
    that plain dict, lack them, and every entry point restores from them. What the file holds is kept; a
    Lightning checkpoint comes back as it is."""
    if "pytorch-lightning_version" in checkpoint:
        return checkpoint
    step = checkpoint.get("global_step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint global_step must be an int >= 0, got {step!r}")
    filled = lightning_checkpoint(checkpoint["state_dict"], checkpoint.get("hyper_parameters") or {}, step=step)
    return {**filled, **checkpoint}
