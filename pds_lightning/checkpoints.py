"""The Lightning checkpoint layout of ScoreModule that every converter writes, and the `.safetensors` export read
back in that layout, so every entry point (fit resume, validate, test, predict, likelihood) takes either."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from pds_lightning.fileio import write_atomic
from pds_lightning.safetensors_io import load_weights

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


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """A `.safetensors` export as a Lightning checkpoint at step 0 (weights, statistics, hyper-parameters; no
    optimizer state): what `predict` / `validate` / `test` / a fine-tuning `fit` read with `--ckpt_path`."""
    state_dict, hparams = load_weights(path)
    return as_lightning_checkpoint({"state_dict": state_dict, "hyper_parameters": hparams})


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
