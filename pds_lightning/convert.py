"""Import a released score_sde checkpoint as a pds_lightning (Lightning) checkpoint.

score_sde saves ``{'model': state_dict of nn.DataParallel(net) ('module.' prefix), 'ema': {'decay',
'num_updates', 'shadow_params': list in the order of the parameters with requires_grad},
'optimizer': Adam state_dict, 'step': int}``. The output holds ``ScoreModule``'s state dict
(``net.*`` raw weights, ``ema_net.*`` EMA weights used for sampling, ``ema_num_updates``, statistics
buffers), the Adam state, and the hyper-parameters of the config's ``model:`` section (``net`` and ``sde`` as
class_path / init_args) and the state of all four Lightning loops, so every entry point (``fit --ckpt_path``,
``validate``, ``test`` / ``likelihood``, ``predict``) and ``ScoreModule.load_from_checkpoint`` accept it. A resumed fit continues
score_sde's step count, Adam moments and warm-up (the rate is a function of the global step, so no scheduler
state is needed).

Usage: ``pds-lightning convert-score-sde CHECKPOINT --config NAME_OR_YAML --output FILE.ckpt
[--freq-stat F.npy --space-stat S.npy] [--safetensors] [--force]``. No input is ever written over; an existing
output only with ``--force``; the files appear all together or none (``fileio``).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from pds_lightning import classpath, yamlfile
from pds_lightning.checkpoints import checkpoint_bytes, lightning_checkpoint
from pds_lightning.fileio import check_outputs, write_atomic_all
from pds_lightning.models.checkpoint import state_dict_mismatch
from pds_lightning.checkpoints import check_compile
from pds_lightning.module import ScoreModule
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.resources import config_path, shipped_configs as all_shipped_configs
from pds_lightning.safetensors_io import checkpoint_weights_bytes
from pds_lightning.sde import SDE

SHIPPED_FOLDER = "score_sde"  # shipped configs: configs/score_sde/<name>.yaml (pds_lightning.resources)
PREFIX = "module."


class ConversionError(ValueError):
    """The checkpoint cannot be converted with the given config; the message names the problem."""


def shipped_configs() -> list[str]:
    """Names of the shipped score_sde configs, e.g. 've_cifar10_ncsnpp_continuous'."""
    prefix = SHIPPED_FOLDER + "/"
    return [name[len(prefix):] for name in all_shipped_configs() if name.startswith(prefix)]


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """A shipped config name (e.g. ``ve_cifar10_ncsnpp_continuous`` or ``ve/cifar10_ncsnpp_continuous``)
    or a path to such a YAML."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConversionError(f"config file {path} does not exist")
        return path
    name = str(name_or_path).replace("/", "_")
    if name not in shipped_configs():
        raise ConversionError(f"unknown config {str(name_or_path)!r}; use a YAML path or one of: "
                              + ", ".join(shipped_configs()))
    return config_path(f"{SHIPPED_FOLDER}/{name}")


def load_model_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The ``model:`` mapping of a config (needs ``net`` and ``sde`` with class_path and init_args; every other
    key must be a ScoreModule argument, as LightningCLI would require)."""
    path = resolve_config(name_or_path)
    try:
        cfg = yamlfile.load_file(path)
    except (yamlfile.ConfigFileError, UnicodeDecodeError) as err:
        raise ConversionError(str(err)) from err
    if not isinstance(cfg, dict):
        raise ConversionError(f"config {path} holds a YAML {type(cfg).__name__}, not a mapping with a 'model:' "
                              "section; see configs/score_sde/*.yaml")
    model = cfg.get("model")
    for name in ("net", "sde"):
        if not isinstance(model, dict) or not isinstance(model.get(name), dict) or "class_path" not in model[name]:
            raise ConversionError(f"config {path} has no 'model: {name}: class_path:' section (the checkpoint "
                                  "records how to rebuild the network and the SDE); see configs/score_sde/*.yaml")
    unknown = sorted(set(model) - set(score_module_arguments()))
    if unknown:
        raise ConversionError(f"config {path}: model: has unknown keys {unknown}; ScoreModule takes "
                              f"{sorted(score_module_arguments())}")
    try:  # untrusted: every class path (sampler and nested parts too) before any import; no compile backend
        for key, value in model.items():
            classpath.check_class_paths(value, f"model.{key}", classpath.allow_list())
        check_compile(model.get("compile", False), f"config {path}: model.compile")
    except ValueError as err:
        raise ConversionError(str(err)) from err
    return model


def score_module_arguments() -> list[str]:
    """Names ScoreModule's constructor takes (the keys of a config's ``model:`` section)."""
    return [k for k in inspect.signature(ScoreModule.__init__).parameters if k != "self"]


def checkpoint_outputs(output_path: str | os.PathLike, safetensors: bool, what: str = "--output") -> list[tuple[str, Path]]:
    """(what, path) of the files a converter writes: the Lightning checkpoint and, with `safetensors`, its weights
    beside it as OUTPUT.safetensors. A checkpoint named *.safetensors is refused: its content is a zip of pickles,
    which every loader would read as .safetensors (by the suffix) and fail on."""
    output_path = Path(output_path)
    if output_path.suffix == ".safetensors":
        raise ConversionError(f"{what} {output_path}: the converted checkpoint is a Lightning .ckpt (a zip), not "
                              f".safetensors; give {output_path.with_suffix('.ckpt')} and pass --safetensors to also "
                              f"write {output_path} (weights and settings, no optimizer state)")
    outputs = [(what, output_path)]
    if safetensors:
        outputs.append(("the --safetensors file", output_path.with_suffix(".safetensors")))
    return outputs


def write_outputs(checkpoint: dict[str, Any], outputs: list[tuple[str, Path]], extra: dict[Path, bytes] | None = None) -> Path:
    """Write the checkpoint to the first of `checkpoint_outputs`, its .safetensors to the second (if any) and the
    `extra` files, all together or none (`fileio.write_atomic_all`); returns the checkpoint's path."""
    files = {outputs[0][1]: checkpoint_bytes(checkpoint)}
    if len(outputs) > 1:
        files[outputs[1][1]] = checkpoint_weights_bytes(checkpoint)
    files.update(extra or {})
    write_atomic_all(files)
    return outputs[0][1]


def instantiate(spec: dict[str, Any], what: str = "class_path", base: type | tuple[type, ...] = (nn.Module, SDE)) -> Any:
    """Build ``{'class_path': 'pkg.mod.Class', 'init_args': {...}}`` as LightningCLI would; a config is untrusted,
    so only allowed names are imported (classpath.allow_list) and only subclasses of `base` (a network or an
    SDE) are built, anything else is refused before it runs."""
    try:
        return classpath.instantiate(spec, what, base, classpath.allow_list())
    except ValueError as err:
        raise ConversionError(str(err)) from err


def hyper_parameters(model_cfg: dict[str, Any], shape: tuple[int, int, int], centered: bool) -> dict[str, Any]:
    """ScoreModule's hyper-parameters from the config's ``model:`` section (plain data, as fit saves them),
    so the converted checkpoint loads with ``ScoreModule.load_from_checkpoint`` alone."""
    names = score_module_arguments()
    hparams = {k: copy.deepcopy(v) for k, v in model_cfg.items() if k in names}
    hparams.update(num_channels=shape[0], image_size=shape[1], centered=bool(model_cfg.get("centered", centered)))
    return hparams


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a score_sde checkpoint (weights only) and check its top-level layout."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors of torch.load have no common type
        raise ConversionError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}. The file is "
                              "truncated, corrupt or not a torch checkpoint; download it again") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ConversionError(f"{path} is not a score_sde checkpoint: expected a dict with 'model', 'ema', "
                              f"'optimizer', 'step', got {type(ckpt).__name__} with keys "
                              f"{sorted(ckpt) if isinstance(ckpt, dict) else '-'}")
    if not isinstance(ckpt.get("ema"), dict) or "shadow_params" not in ckpt["ema"]:
        raise ConversionError(f"{path} has no EMA weights ('ema' with 'shadow_params'); released score_sde "
                              "checkpoints always carry them, the sampling weights come from there")
    return ckpt


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop nn.DataParallel's 'module.' prefix (present on all keys or none)."""
    if state_dict and all(k.startswith(PREFIX) for k in state_dict):
        return {k[len(PREFIX):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def check_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], config: str) -> None:
    """Strict match of names and shapes; one error listing every difference."""
    problem = state_dict_mismatch(expected, got, show=20, against="config")
    if problem:
        raise ConversionError(f"checkpoint does not match config {config}: {problem}. "
                              "Pick the config the checkpoint was trained with.")


def ema_state_dict(net: nn.Module, raw: dict[str, torch.Tensor], shadow: Sequence[torch.Tensor]) -> dict:
    """The raw state dict with trainable parameters replaced, in order, by the EMA shadow params.

    Frozen parameters (the Fourier W) and buffers (sigmas) are not tracked by the EMA: they keep the
    raw values, as score_sde's ``ema.copy_to`` leaves them.
    """
    trainable = [name for name, p in net.named_parameters() if p.requires_grad]
    if len(shadow) != len(trainable):
        raise ConversionError(f"EMA has {len(shadow)} shadow params but the network has {len(trainable)} "
                              "trainable parameters; checkpoint and config disagree")
    ema = dict(raw)
    for name, value in zip(trainable, shadow):
        if tuple(value.shape) != tuple(raw[name].shape):
            raise ConversionError(f"EMA shadow param for {name} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(raw[name].shape)}")
        ema[name] = value.to(raw[name].dtype)
    return ema


def adam_state(optimizer: dict[str, Any] | None, net: nn.Module) -> dict[str, Any] | None:
    """score_sde's Adam state, indices checked against ``net.parameters()`` (ScoreModule's order)."""
    if not optimizer:
        return None
    params = list(net.parameters())
    groups = optimizer.get("param_groups", [])
    indices = [i for g in groups for i in g.get("params", [])]
    if sorted(indices) != list(range(len(params))):
        raise ConversionError(f"optimizer state covers {len(indices)} parameters, the network has "
                              f"{len(params)}; checkpoint and config disagree")
    for i, state in optimizer.get("state", {}).items():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state and tuple(state[key].shape) != tuple(params[i].shape):
                raise ConversionError(f"optimizer {key} of parameter {i} has shape {tuple(state[key].shape)}, "
                                      f"expected {tuple(params[i].shape)}")
    return optimizer


def statistics_buffers(shape: tuple[int, int, int], freq_stat: str | os.PathLike | None = None,
                       space_stat: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """ScoreModule's ``stat_*`` buffers; from official PDS ``.npy`` statistics when given.

    Official files hold log1p(power_mean) and sq_mean; they carry no pixel mean, stored as zeros.
    """
    zeros = torch.zeros(shape, dtype=torch.float32)
    buffers = {"stat_count": torch.zeros((), dtype=torch.float64), "stat_power_mean": zeros,
               "stat_mean": zeros.clone(), "stat_sq_mean": zeros.clone()}
    if freq_stat is None and space_stat is None:
        return buffers
    if freq_stat is None or space_stat is None:
        raise ConversionError("give both --freq-stat and --space-stat (the official statistics come as a pair)")
    from pds_lightning.preconditioner import read_statistic

    freq, space = read_statistic(freq_stat), read_statistic(space_stat)
    for name, stat in (("freq", freq), ("space", space)):
        if tuple(stat.shape) != tuple(shape):
            raise ConversionError(f"{name} statistic has shape {tuple(stat.shape)}, the model's images are {shape}")
    buffers.update(stat_count=torch.ones((), dtype=torch.float64), stat_power_mean=torch.expm1(freq),
                   stat_sq_mean=space)
    return buffers


def check_loadable(hparams: dict[str, Any], state_dict: dict[str, torch.Tensor], config: Any) -> None:
    """Build ScoreModule from exactly the hyper-parameters and state the checkpoint will hold, and the PDS
    preconditioner from its statistics, so a bad setting (sampler method, all-zero statistic) is refused now
    rather than when the checkpoint is first used."""
    try:
        module = ScoreModule.from_hyper_parameters(**copy.deepcopy(hparams))
        module.load_state_dict(state_dict, strict=True)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ConversionError(f"config {config}: the model: settings are refused ({err}); fix them, a checkpoint "
                              "with them would not load") from err
    stats = module.data_statistics
    if stats is None:
        return
    pds = module.sampler.pds
    alpha = pds.alpha if pds is not None and not pds.chooses_alpha else 5.0  # a chooser picks later; 5: the default
    try:
        Preconditioner.from_statistics(stats.freq_statistic(), stats.space_statistic(), alpha)
    except ValueError as err:
        raise ConversionError(f"--freq-stat / --space-stat cannot give the PDS preconditioner: {err}") from err


def convert_score_sde(checkpoint_path: str | os.PathLike, config: str | os.PathLike,
                      output_path: str | os.PathLike, freq_stat: str | os.PathLike | None = None,
                      space_stat: str | os.PathLike | None = None, safetensors: bool = False,
                      force: bool = False) -> Path:
    """Convert a score_sde checkpoint with the network of ``config``; returns the output path. With
    `safetensors`, the weights also go to OUTPUT.safetensors (plain tensors + JSON, `safetensors_io`). An output
    that is an input is refused, an existing one unless `force`."""
    model_cfg = load_model_config(config)
    outputs = checkpoint_outputs(output_path, safetensors)
    check_outputs(outputs, [checkpoint_path, resolve_config(config), freq_stat, space_stat], force)
    ckpt = read_checkpoint(checkpoint_path)
    net = instantiate(model_cfg["net"], "model.net", nn.Module)
    instantiate(model_cfg["sde"], "model.sde", SDE)  # a bad sde fails here, not when the checkpoint is loaded
    expected = net.state_dict()
    raw = strip_prefix(ckpt["model"])
    check_state_dict(expected, raw, str(config))
    net.load_state_dict(raw, strict=True)
    raw = {k: v.detach().clone() for k, v in net.state_dict().items()}  # dtypes as the network stores them
    ema = ema_state_dict(net, raw, ckpt["ema"]["shadow_params"])
    shape = (int(model_cfg.get("num_channels", getattr(net, "num_channels", 3))),
             *(2 * [int(model_cfg.get("image_size", getattr(net, "image_size", 32)))]))

    state_dict = {f"net.{k}": v for k, v in raw.items()}
    state_dict.update({f"ema_net.{k}": v for k, v in ema.items()})
    state_dict["ema_num_updates"] = torch.tensor(int(ckpt["ema"].get("num_updates") or 0), dtype=torch.long)
    state_dict.update(statistics_buffers(shape, freq_stat, space_stat))

    optimizer = adam_state(ckpt.get("optimizer"), net)
    step = int(ckpt.get("step", 0))
    hparams = hyper_parameters(model_cfg, shape, getattr(net, "centered", False))
    check_loadable(hparams, state_dict, config)
    out = lightning_checkpoint(
        state_dict, hparams, step=step,
        optimizer=optimizer,
        extra={"score_sde": {"config": str(config), "step": step, "ema_decay": float(ckpt["ema"].get("decay", 0.0))}})
    return write_outputs(out, outputs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning convert-score-sde", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("checkpoint", help="score_sde checkpoint (.pth)")
    parser.add_argument("--config", required=True,
                        help="shipped config name (configs/score_sde/NAME.yaml) or a YAML path")
    parser.add_argument("--output", required=True, help="Lightning checkpoint to write (.ckpt)")
    parser.add_argument("--freq-stat", default=None, help="official PDS frequency statistic (.npy)")
    parser.add_argument("--space-stat", default=None, help="official PDS space statistic (.npy)")
    parser.add_argument("--safetensors", action="store_true", help="also write OUTPUT.safetensors (no pickle)")
    parser.add_argument("--force", action="store_true", help="replace existing output files (never an input)")
    args = parser.parse_args(argv)
    try:
        path = convert_score_sde(args.checkpoint, args.config, args.output, args.freq_stat, args.space_stat,
                                 safetensors=args.safetensors, force=args.force)
    except (ValueError, OSError) as err:  # ConversionError, and the readers' errors on a statistics file
        parser.exit(2, f"error: {' '.join(str(err).split())}\n")
    print(f"wrote {path}")
    return 0
