"""Import a diffusers-format NCSN++ (the google/ncsnpp-* models of the Hugging Face Hub) as a pds_lightning checkpoint.

diffusers stores score_sde's NCSN++ as a ``UNet2DModel`` with a Fourier noise embedding and Skip blocks
(``SkipDownBlock2D`` / ``AttnSkipDownBlock2D`` down, ``SkipUpBlock2D`` / ``AttnSkipUpBlock2D`` up): score_sde's
``progressive='output_skip'``, ``progressive_input='input_skip'``, ``progressive_combine='sum'``, BigGAN
residual blocks with FIR resampling and skip_rescale. This module maps every parameter to the project's
``NCSNpp`` (`all_modules.N`, score_sde's names), and refuses (one line naming the field or block) any
configuration whose diffusers forward the project's network would not compute exactly:

- block types other than the four Skip blocks, other embeddings, class embeddings, other activations;
- a norm whose group count in diffusers differs from score_sde's ``min(C // 4, 32)``: the attention of
  ``AttnSkip*`` blocks uses 32 groups (so attention levels convert from 128 channels up) and ``AttnSkipUpBlock2D``
  groups its residual blocks' first norm by ``min(c_in + c_skip // 4, 32)``;
- multi-head attention (``attention_head_dim`` other than None or the channel count), ``norm_eps`` other than
  1e-6 and a ``mid_block_scale_factor`` other than sqrt(2) (score_sde's skip_rescale).

The SDE is the VE SDE of the ``ScoreSdeVeScheduler`` config (sigma_min, sigma_max, num_train_timesteps -> N);
its predictor-corrector settings (snr, correct_steps, sampling_eps) become the PC sampler's Langevin snr, steps_per_level
and eps. Data are in [0, 1] (diffusers' ScoreSdeVePipeline clamps its samples there); the network centres its
input (2x - 1) only where the config says ``center_input_sample``. PDS needs data statistics:
``statistics_from`` computes them from a folder of images, as ``fit`` does (``ImageDataModule``).

Usage: ``pds-lightning convert-diffusers MODEL_DIR OUTPUT.ckpt [--statistics-from IMAGES] [--safetensors]``;
it also writes OUTPUT.yaml, the config ``predict`` takes with ``--ckpt_path OUTPUT.ckpt``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml
from torch import nn

from pds_lightning.checkpoints import lightning_checkpoint, save_checkpoint
from pds_lightning.convert import ConversionError, hyper_parameters
from pds_lightning.convert import statistics_buffers as no_statistics
from pds_lightning.fileio import write_atomic
from pds_lightning.models.layers import AttnBlock, Combine, GaussianFourierProjection
from pds_lightning.models.ncsnpp import NCSNpp
from pds_lightning.models.resblocks import ResnetBlockBigGAN
from pds_lightning.sampling import PC, PDS, Langevin
from pds_lightning.sde import VESDE, check_step_count

NET_CLASS = "pds_lightning.models.NCSNpp"
SDE_CLASS = "pds_lightning.sde.VESDE"
WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
MODEL_FOLDERS = ("model", "unet")  # pipeline layouts; the google/ncsnpp-* repos keep everything at the top
DOWN_BLOCKS = {"SkipDownBlock2D": False, "AttnSkipDownBlock2D": True}  # type -> has attention
UP_BLOCKS = {"SkipUpBlock2D": False, "AttnSkipUpBlock2D": True}
EPS = 1e-6  # score_sde's GroupNorm epsilon (models.layers.group_norm)
# UNet2DModel fields that Skip blocks with a Fourier embedding do not read in diffusers either.
UNUSED_FIELDS = {"flip_sin_to_cos", "freq_shift", "downsample_padding", "downsample_type", "upsample_type",
                 "num_train_timesteps"}
# The part of a UNet2DModel config this converter reads; any other field is refused.
KNOWN_FIELDS = UNUSED_FIELDS | {
    "sample_size", "in_channels", "out_channels", "center_input_sample", "time_embedding_type",
    "time_embedding_dim", "down_block_types", "mid_block_type", "up_block_types", "block_out_channels",
    "layers_per_block", "mid_block_scale_factor", "dropout", "act_fn", "attention_head_dim", "norm_num_groups",
    "attn_norm_num_groups", "norm_eps", "resnet_time_scale_shift", "add_attention", "class_embed_type",
    "num_class_embeds"}
SCHEDULER_FIELDS = {"num_train_timesteps", "snr", "sigma_min", "sigma_max", "sampling_eps", "correct_steps"}

# Parameter names inside one block: project suffix -> diffusers suffixes (newer name first).
RESNET_NAMES = {"GroupNorm_0": ("norm1",), "Conv_0": ("conv1",), "Dense_0": ("time_emb_proj",),
                "GroupNorm_1": ("norm2",), "Conv_1": ("conv2",), "Conv_2": ("conv_shortcut",)}
# diffusers renamed its attention projections (query/key/value/proj_attn in files of diffusers < 0.15)
ATTENTION_NAMES = {"GroupNorm_0": ("group_norm",), "NIN_0": ("to_q", "query"), "NIN_1": ("to_k", "key"),
                   "NIN_2": ("to_v", "value"), "NIN_3": ("to_out.0", "proj_attn")}


@dataclass
class DiffusersModel:
    """The files of one diffusers NCSN++: UNet2DModel config, its weights, and the scheduler config (or None)."""
    folder: Path
    config: dict[str, Any]
    weights: Path
    scheduler: dict[str, Any] | None


# ---- reading the folder -----------------------------------------------------------------------------------
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConversionError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path} holds a {type(data).__name__}, expected a JSON object")
    return data


def model_folder(root: Path) -> Path:
    """The folder holding the UNet2DModel's config.json: `root` itself (flat) or model/ / unet/ (pipeline)."""
    names = list(MODEL_FOLDERS)
    index = root / "model_index.json"
    if index.is_file():  # the pipeline names its network component (google/ncsnpp-*: 'model')
        names = [k for k, v in read_json(index).items() if isinstance(v, list) and "UNet2DModel" in v] + names
    for folder in (root, *(root / name for name in names)):
        if (folder / "config.json").is_file():
            return folder
    raise ConversionError(f"{root} holds no diffusers model: expected config.json at the top or in one of "
                          f"{', '.join(n + '/' for n in dict.fromkeys(names))}; download the whole repository")


def scheduler_config(root: Path, folder: Path) -> dict[str, Any] | None:
    for path in (folder / "scheduler_config.json", root / "scheduler_config.json",
                 root / "scheduler" / "scheduler_config.json"):
        if path.is_file():
            return read_json(path)
    return None


def weights_file(folder: Path) -> Path:
    for name in WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    others = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
    hint = (f"; found only {', '.join(others)} (sharded or variant weights are not supported: save the model "
            "unsharded in float32)") if others else ""
    raise ConversionError(f"{folder} has no {' or '.join(WEIGHTS)}{hint}")


def open_model(model_dir: str | os.PathLike) -> DiffusersModel:
    """Locate config, weights and scheduler config in a downloaded diffusers folder (no diffusers import)."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ConversionError(f"model folder {root} does not exist; download it first, e.g. "
                              "huggingface-cli download google/ncsnpp-ffhq-256 --local-dir ncsnpp-ffhq-256")
    folder = model_folder(root)
    config = read_json(folder / "config.json")
    if config.get("_class_name") != "UNet2DModel":
        raise ConversionError(f"{folder / 'config.json'} describes a {config.get('_class_name')!r}; "
                              "convert-diffusers reads UNet2DModel (NCSN++) folders")
    return DiffusersModel(folder, config, weights_file(folder), scheduler_config(root, folder))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights as a flat name -> tensor dict; a .bin is a pickle, read with weights_only=True."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights = load_file(str(path), device="cpu")
        else:
            weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors / zip / pickle errors share no type
        raise ConversionError(f"cannot read weights {path}: {type(err).__name__}: {err}; download them again") from err
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConversionError(f"{path} is not a state dict of tensors")
    return weights


# ---- config -> NCSNpp ----------------------------------------------------------------------------------
def refuse(field: str, value: Any, why: str) -> ConversionError:
    return ConversionError(f"config.json {field}={value!r} cannot be converted: {why}")


def image_size(config: dict[str, Any]) -> int:
    size = config.get("sample_size")
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise refuse("sample_size", size, "needs one positive side (square images)")
    return size


def attention_levels(config: dict[str, Any]) -> list[bool]:
    """Per resolution level (finest first): whether it has attention; refuses unknown block types."""
    down, up = list(config.get("down_block_types") or []), list(config.get("up_block_types") or [])
    for field, types, known in (("down_block_types", down, DOWN_BLOCKS), ("up_block_types", up, UP_BLOCKS)):
        unknown = [t for t in types if t not in known]
        if unknown:
            raise refuse(field, unknown, f"unsupported block type(s) {', '.join(unknown)}; the NCSN++ layout uses "
                         f"{' / '.join(known)}")
    n = len(config.get("block_out_channels") or [])
    if not n or len(down) != n or len(up) != n:
        raise ConversionError(f"config.json has {len(down)} down blocks, {len(up)} up blocks and {n} "
                              "block_out_channels; they must agree")
    levels = [DOWN_BLOCKS[t] for t in down]
    up_levels = [UP_BLOCKS[t] for t in reversed(up)]
    if levels != up_levels:
        raise refuse("up_block_types", up, f"attention must sit at the same resolutions on the way up as down "
                     f"({down}): score_sde's attn_resolutions cover both")
    return levels


def check_fields(config: dict[str, Any]) -> None:
    """Refuse every field value the project's NCSN++ does not compute as diffusers does."""
    unknown = sorted(k for k in config if not k.startswith("_") and k not in KNOWN_FIELDS)
    if unknown:
        raise ConversionError(f"config.json has fields this converter does not know: {', '.join(unknown)} "
                              "(a newer or other UNet2DModel); they may change the network, so it is refused")
    nf = config["block_out_channels"][0]
    fixed = [("time_embedding_type", "fourier", "the NCSN++ layout has a Fourier noise embedding"),
             ("in_channels", 3, "diffusers' Skip blocks fix 3 image channels"),
             ("out_channels", 3, "diffusers' Skip blocks fix 3 image channels"),
             ("resnet_time_scale_shift", "default", "score_sde adds the time embedding"),
             ("class_embed_type", None, "class embeddings are not supported"),
             ("num_class_embeds", None, "class embeddings are not supported"),
             ("mid_block_type", "UNetMidBlock2D", "NCSN++ has residual-attention-residual in the middle"),
             ("add_attention", True, "NCSN++ has attention in the middle")]
    for field, want, why in fixed:
        if config.get(field, want) != want:
            raise refuse(field, config[field], why)
    if config.get("act_fn", "silu") not in ("silu", "swish"):
        raise refuse("act_fn", config["act_fn"], "NCSN++ uses swish (silu)")
    if config.get("time_embedding_dim") not in (None, 4 * nf):
        raise refuse("time_embedding_dim", config["time_embedding_dim"], f"NCSN++ uses 4 * {nf}")
    if not math.isclose(float(config.get("norm_eps", 1e-5)), EPS, rel_tol=1e-6):
        raise refuse("norm_eps", config.get("norm_eps", 1e-5), f"score_sde's GroupNorm uses eps={EPS}")
    if not math.isclose(float(config.get("mid_block_scale_factor", 1.0)), math.sqrt(2.0), rel_tol=1e-9):
        raise refuse("mid_block_scale_factor", config.get("mid_block_scale_factor", 1.0),
                     "score_sde's skip_rescale divides every residual sum by sqrt(2), as diffusers' Skip blocks do")
    channels = config["block_out_channels"]
    if any(c % nf for c in channels):
        raise refuse("block_out_channels", channels, f"every entry must be a multiple of the first ({nf})")


def net_init_args(config: dict[str, Any], sde: VESDE) -> dict[str, Any]:
    """NCSNpp's init_args (score_sde's field names) for a diffusers NCSN++ config."""
    levels = attention_levels(config)
    check_fields(config)
    size = image_size(config)
    channels = list(config["block_out_channels"])
    nf = channels[0]
    if size % 2 ** (len(channels) - 1):
        raise refuse("sample_size", size, f"must be divisible by 2**{len(channels) - 1}")
    head_dim = config.get("attention_head_dim")
    attended = [c for c, attn in zip(channels, levels) if attn] + [channels[-1]]  # the middle always attends
    if head_dim is not None and any(c != head_dim for c in attended):
        raise refuse("attention_head_dim", head_dim, "score_sde's attention has one head; use null (None)")
    return dict(nf=nf, ch_mult=[c // nf for c in channels], num_res_blocks=int(config.get("layers_per_block", 2)),
                attn_resolutions=[size // 2 ** i for i, attn in enumerate(levels) if attn],
                dropout=float(config.get("dropout", 0.0)), resamp_with_conv=True, conditional=True, fir=True,
                fir_kernel=[1, 3, 3, 1], skip_rescale=True, resblock_type="biggan", progressive="output_skip",
                progressive_input="input_skip", progressive_combine="sum", attention_type="ddpm",
                embedding_type="fourier", init_scale=0.0, fourier_scale=16.0, conv_size=3, nonlinearity="swish",
                normalization="GroupNorm", scale_by_sigma=True, sigma_min=sde.sigma_min, sigma_max=sde.sigma_max,
                num_scales=sde.N, image_size=size, num_channels=3,
                centered=not bool(config.get("center_input_sample", False)))


# ---- scheduler -> SDE and sampler ----------------------------------------------------------------------
def ve_sde(scheduler: dict[str, Any] | None, sigma_min: float | None = None, sigma_max: float | None = None,
           num_scales: int | None = None) -> tuple[VESDE, PC]:
    """The VE SDE and the sampler's PC settings of a ScoreSdeVeScheduler config (or of the given values,
    where the folder has no scheduler)."""
    given = {k: v for k, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max), ("num_scales", num_scales))
             if v is not None}
    if scheduler is None:
        if len(given) != 3:
            raise ConversionError("the folder has no scheduler_config.json; give the model's VE SDE with "
                                  "--sigma-min, --sigma-max and --num-scales (score_sde's config of the model)")
        check_step_count(int(num_scales), "--num-scales")
        return VESDE(**given), PC(name="pds", pds=PDS(filters="both", alpha=5.0))
    if given:
        raise ConversionError(f"the folder's scheduler_config.json sets the SDE; drop {', '.join(given)}")
    name = scheduler.get("_class_name")
    if name != "ScoreSdeVeScheduler":
        raise ConversionError(f"scheduler {name!r} is not a ScoreSdeVeScheduler: the NCSN++ models of the Hub are "
                              "VE score models, other schedules are not supported")
    unknown = sorted(k for k in scheduler if not k.startswith("_") and k not in SCHEDULER_FIELDS)
    if unknown:
        raise ConversionError(f"scheduler_config.json has fields this converter does not know: {', '.join(unknown)}")
    # ScoreSdeVeScheduler's defaults for absent fields
    steps = int(scheduler.get("num_train_timesteps", 2000))
    check_step_count(steps, "scheduler_config.json num_train_timesteps")
    sde = VESDE(float(scheduler.get("sigma_min", 0.01)), float(scheduler.get("sigma_max", 1348.0)), steps)
    sampler = PC(name="pds", eps=float(scheduler.get("sampling_eps", 1e-5)), pds=PDS(filters="both", alpha=5.0),
                 corrector=Langevin(snr=float(scheduler.get("snr", 0.15)),
                                    steps_per_level=int(scheduler.get("correct_steps", 1))))
    return sde, sampler


# ---- parameter mapping ---------------------------------------------------------------------------------
def diffusers_layout(n_levels: int, num_res_blocks: int, attention: Sequence[bool]) -> Iterator[tuple[str, type]]:
    """(diffusers module prefix, project module type) in the order of NCSNpp.all_modules (score_sde's)."""
    yield "time_proj", GaussianFourierProjection
    yield "time_embedding.linear_1", nn.Linear
    yield "time_embedding.linear_2", nn.Linear
    yield "conv_in", nn.Conv2d
    for i in range(n_levels):
        for j in range(num_res_blocks):
            yield f"down_blocks.{i}.resnets.{j}", ResnetBlockBigGAN
            if attention[i]:
                yield f"down_blocks.{i}.attentions.{j}", AttnBlock
        if i != n_levels - 1:
            yield f"down_blocks.{i}.resnet_down", ResnetBlockBigGAN
            yield f"down_blocks.{i}.skip_conv", Combine
    yield "mid_block.resnets.0", ResnetBlockBigGAN
    yield "mid_block.attentions.0", AttnBlock
    yield "mid_block.resnets.1", ResnetBlockBigGAN
    for i in reversed(range(n_levels)):
        u = n_levels - 1 - i
        for j in range(num_res_blocks + 1):
            yield f"up_blocks.{u}.resnets.{j}", ResnetBlockBigGAN
        if attention[i]:
            yield f"up_blocks.{u}.attentions.0", AttnBlock
        if i != 0:
            yield f"up_blocks.{u}.skip_norm", nn.GroupNorm
            yield f"up_blocks.{u}.skip_conv", nn.Conv2d
            yield f"up_blocks.{u}.resnet_up", ResnetBlockBigGAN
        else:
            yield "conv_norm_out", nn.GroupNorm
            yield "conv_out", nn.Conv2d


def diffusers_groups(config: dict[str, Any], prefix: str, name: str, module: nn.Module) -> int | None:
    """The group count diffusers gives the norm `prefix`.`name` (None: score_sde's min(C // 4, 32)).

    Facts of diffusers' unet_2d_blocks: AttnSkip* attention norms use 32 groups; AttnSkipUpBlock2D's residual
    blocks group their first norm by min(c_in + c_skip // 4, 32); the middle and conv_norm_out use
    norm_num_groups (attn_norm_num_groups for the middle attention) when set."""
    if prefix.startswith(("down_blocks.", "up_blocks.")) and ".attentions." in prefix:
        return 32
    if prefix.startswith("up_blocks.") and ".resnets." in prefix and name == "GroupNorm_0":
        u = int(prefix.split(".")[1])
        if config["up_block_types"][u] == "AttnSkipUpBlock2D":
            c_out, c_in = module.out_ch, module.in_ch  # c_in = previous output + skip channels
            j, last = int(prefix.rsplit(".", 1)[1]), int(config.get("layers_per_block", 2))
            levels = list(reversed(config["block_out_channels"]))
            c_skip = levels[min(u + 1, len(levels) - 1)] if j == last else c_out
            return min(c_in - c_skip + c_skip // 4, 32)
    if prefix.startswith("mid_block.") or prefix == "conv_norm_out":
        groups = config.get("norm_num_groups")
        if prefix == "mid_block.attentions.0" and config.get("attn_norm_num_groups") is not None:
            groups = config["attn_norm_num_groups"]
        return groups
    return None


def check_groups(config: dict[str, Any], prefix: str, module: nn.Module) -> None:
    norms = [("", module)] if isinstance(module, nn.GroupNorm) else [
        (n, m) for n, m in module.named_children() if isinstance(m, nn.GroupNorm)]
    for name, norm in norms:
        theirs = diffusers_groups(config, prefix, name, module)
        if theirs is not None and theirs != norm.num_groups:
            table = ATTENTION_NAMES if isinstance(module, AttnBlock) else RESNET_NAMES
            where = f"{prefix}.{table[name][0]}" if name else prefix
            raise ConversionError(
                f"{where} normalises {norm.num_channels} channels in {theirs} groups in diffusers, score_sde's NCSN++ "
                f"in min(C // 4, 32) = {norm.num_groups}: the two networks differ, so this layout cannot be converted "
                "exactly (attention levels need >= 128 channels; see the README, 'Models from the Hugging Face Hub')")


def source_names(kind: type, suffix: str) -> tuple[str, ...]:
    """diffusers names, relative to the block, of the project parameter `suffix` (e.g. 'Conv_0.weight')."""
    if kind in (ResnetBlockBigGAN, AttnBlock):
        table = RESNET_NAMES if kind is ResnetBlockBigGAN else ATTENTION_NAMES
        head, _, leaf = suffix.rpartition(".")
        leaf = {"W": "weight", "b": "bias"}.get(leaf, leaf)
        return tuple(f"{name}.{leaf}" for name in table[head])
    if kind is GaussianFourierProjection:
        return ("weight", "W")
    if kind is Combine:
        return (suffix.removeprefix("Conv_0."),)
    return (suffix,)


def map_state_dict(net: NCSNpp, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The project's state dict from diffusers weights: every parameter mapped, shapes checked, nothing left."""
    levels = attention_levels(config)
    layout = list(diffusers_layout(len(net.ch_mult), net.num_res_blocks, levels))
    if len(layout) != len(net.all_modules):
        raise RuntimeError(f"layout has {len(layout)} modules, NCSNpp {len(net.all_modules)}; converter and network disagree")
    target = net.state_dict()
    mapped, used, problems = {"sigmas": target["sigmas"]}, set(), []
    for index, ((prefix, kind), module) in enumerate(zip(layout, net.all_modules)):
        if not isinstance(module, kind):
            raise RuntimeError(f"all_modules.{index} is a {type(module).__name__}, the layout expects {kind.__name__}")
        check_groups(config, prefix, module)
        for suffix, param in module.state_dict().items():
            names = [f"{prefix}.{n}" for n in source_names(kind, suffix)]
            found = [n for n in names if n in weights]
            if not found:
                problems.append(f"missing {names[0]}")
                continue
            value = weights[found[0]]
            used.add(found[0])
            if kind is AttnBlock and suffix.endswith(".W"):
                value = value.t()  # Linear stores [out, in], score_sde's NIN [in, out]
            if tuple(value.shape) != tuple(param.shape):
                problems.append(f"{found[0]} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
                continue
            mapped[f"all_modules.{index}.{suffix}"] = value.to(param.dtype).contiguous().clone()
    problems += [f"unexpected {name}" for name in sorted(set(weights) - used)]
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ConversionError(f"weights do not match config.json: {'; '.join(problems[:8])}{more}")
    return mapped


# ---- statistics ----------------------------------------------------------------------------------------
def statistics_buffers(shape: tuple[int, int, int], statistics_from: str | os.PathLike | None,
                       num_images: int = 0) -> dict[str, torch.Tensor]:
    """ScoreModule's stat_* buffers: zeros (no statistics), or those `fit` would estimate from the images of
    `statistics_from` (ImageDataModule: resized and centre-cropped to the model's size, all or `num_images`)."""
    buffers = no_statistics(shape)
    if num_images < 0:
        raise ConversionError(f"--statistics-images must be 0 (all images) or a positive count, got {num_images}")
    if statistics_from is None:
        if num_images:
            raise ConversionError("--statistics-images needs --statistics-from IMAGE_FOLDER")
        return buffers
    if not Path(statistics_from).is_dir():
        raise ConversionError(f"--statistics-from {statistics_from} is not a folder of images")
    from pds_lightning.data import ImageDataModule

    dm = ImageDataModule(source=str(statistics_from), image_size=shape[1], num_channels=shape[0], val_size=0,
                         stats_num_images=max(num_images, 1), stats_cache_dir="", num_workers=0, random_flip=False)
    dm.setup_images()
    if num_images == 0:
        dm.hparams.stats_num_images = len(dm.train_indices)
    dm.setup("fit")
    stats = dm.statistics
    buffers.update(stat_count=torch.tensor(float(stats.count), dtype=torch.float64),
                   stat_power_mean=stats.power_mean.float(), stat_mean=stats.mean.float(),
                   stat_sq_mean=stats.sq_mean.float())
    return buffers


# ---- the converter -------------------------------------------------------------------------------------
def model_config(net_args: dict[str, Any], sde: VESDE, sampler: PC) -> dict[str, Any]:
    """The config's ``model:`` section: NCSNpp and VESDE as class specs, PDS with the scheduler's PC settings."""
    return {"net": {"class_path": NET_CLASS, "init_args": net_args},
            "sde": {"class_path": SDE_CLASS,
                    "init_args": {"sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max, "num_scales": sde.N}},
            "continuous": True, "centered": False,
            "sampler": sampler.config()}


def predict_config(model_cfg: dict[str, Any], output: Path) -> dict[str, Any]:
    size = model_cfg["net"]["init_args"]["image_size"]
    return {"trainer": {"callbacks": [{"class_path": "pds_lightning.callbacks.SampleWriter",
                                       "init_args": {"output_dir": f"samples/{output.stem}"}}]},
            "model": model_cfg,
            "data": {"image_size": size, "num_channels": 3, "centered": False, "seeds": "0-15", "predict_batch_size": 4}}


def convert_diffusers(model_dir: str | os.PathLike, output: str | os.PathLike,
                      statistics_from: str | os.PathLike | None = None, *, statistics_images: int = 0,
                      sigma_min: float | None = None, sigma_max: float | None = None, num_scales: int | None = None,
                      safetensors: bool = False) -> Path:
    """Convert a downloaded diffusers NCSN++ folder; writes OUTPUT (.ckpt), OUTPUT.yaml (the predict config)
    and, with `safetensors`, OUTPUT.safetensors. Returns the checkpoint path."""
    source = open_model(model_dir)
    sde, sampler = ve_sde(source.scheduler, sigma_min, sigma_max, num_scales)
    net_args = net_init_args(source.config, sde)
    net = NCSNpp(**net_args)
    weights = map_state_dict(net, source.config, read_weights(source.weights))
    net.load_state_dict(weights, strict=True)
    shape = (3, net_args["image_size"], net_args["image_size"])
    model_cfg = model_config(net_args, sde, sampler)

    state_dict = {f"net.{k}": v for k, v in weights.items()}
    state_dict.update({f"ema_net.{k}": v.clone() for k, v in weights.items()})  # released weights sample
    state_dict["ema_num_updates"] = torch.zeros((), dtype=torch.long)
    state_dict.update(statistics_buffers(shape, statistics_from, statistics_images))
    record = {"diffusers": {"folder": str(Path(model_dir).resolve()), "weights": source.weights.name,
                            "config": source.config, "scheduler": source.scheduler}}
    checkpoint = lightning_checkpoint(state_dict, hyper_parameters(model_cfg, shape, False), extra=record)
    output = Path(output)
    write_atomic(output.with_suffix(".yaml"), yaml.safe_dump(predict_config(model_cfg, output), sort_keys=False).encode())
    if safetensors:
        from pds_lightning.safetensors_io import save_checkpoint_weights

        save_checkpoint_weights(checkpoint, output.with_suffix(".safetensors"))
    return save_checkpoint(checkpoint, output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning convert-diffusers", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="downloaded diffusers folder (config.json + weights, scheduler config)")
    parser.add_argument("output", help="Lightning checkpoint to write (.ckpt); OUTPUT.yaml is the predict config")
    parser.add_argument("--statistics-from", default=None,
                        help="folder of training images: PDS data statistics computed as fit does")
    parser.add_argument("--statistics-images", type=int, default=0, help="images used for them (0: all)")
    parser.add_argument("--safetensors", action="store_true", help="also write OUTPUT.safetensors (no pickle)")
    for name, kind in (("sigma-min", float), ("sigma-max", float), ("num-scales", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="VE SDE where the folder has no scheduler")
    args = parser.parse_args(argv)
    path = convert_diffusers(args.model_dir, args.output, args.statistics_from,
                             statistics_images=args.statistics_images, sigma_min=args.sigma_min,
                             sigma_max=args.sigma_max, num_scales=args.num_scales, safetensors=args.safetensors)
    print(f"wrote {path} and {path.with_suffix('.yaml')}"
          + (f" and {path.with_suffix('.safetensors')}" if args.safetensors else ""))
    print(f"sample: pds-lightning predict --config {path.with_suffix('.yaml')} --ckpt_path {path}")
    return 0
