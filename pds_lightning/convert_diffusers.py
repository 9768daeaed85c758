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

Usage: ``pds-lightning convert-diffusers MODEL_DIR OUTPUT.ckpt [--statistics-from IMAGES] [--safetensors] [--force]``;
it also writes OUTPUT.yaml, the config ``predict`` takes with ``--ckpt_path OUTPUT.ckpt``. No file of MODEL_DIR or
IMAGES is ever written over, an existing output only with ``--force``; the files appear all together or none.
MODEL_DIR is a folder or a Hub repo id (org/name, ``--revision``), fetched through huggingface_hub's cache
(`pds_lightning.hub`); the checkpoint's ``source`` entry and a comment in OUTPUT.yaml record the repo, its commit
and each file's sha256.

The way out reads the same tables backwards: `write_diffusers_folder` writes a module's NCSN++ (EMA weights)
and VE SDE as a ScoreSdeVePipeline folder (``pds-lightning export CKPT OUT_DIR --format diffusers``), refusing
in one line any setting the table above does not map back (another SDE or network, other NCSN++ options).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml
from torch import nn

from pds_lightning import hub
from pds_lightning.checkpoints import lightning_checkpoint
from pds_lightning.convert import ConversionError, checkpoint_outputs, hyper_parameters, write_outputs
from pds_lightning.convert import statistics_buffers as no_statistics
from pds_lightning.fileio import atomic_folder, check_new_folder, check_outputs
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
# ScoreSdeVeScheduler's fields and defaults (diffusers' values for a field a config leaves out)
SCHEDULER_DEFAULTS = {"num_train_timesteps": 2000, "snr": 0.15, "sigma_min": 0.01, "sigma_max": 1348.0,
                      "sampling_eps": 1e-5, "correct_steps": 1}
SCHEDULER_FIELDS = set(SCHEDULER_DEFAULTS)
# The files a Hub download fetches first (the pipeline's configs); the weights follow, from the model's folder.
CONFIG_PATTERNS = ("model_index.json", "config.json", "scheduler_config.json", "*/config.json",
                   "*/scheduler_config.json")

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


def scheduler_file(root: Path, folder: Path) -> Path | None:
    for path in (folder / "scheduler_config.json", root / "scheduler_config.json",
                 root / "scheduler" / "scheduler_config.json"):
        if path.is_file():
            return path
    return None


def scheduler_config(root: Path, folder: Path) -> dict[str, Any] | None:
    path = scheduler_file(root, folder)
    return None if path is None else read_json(path)


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


# ---- where the files come from: a folder or a Hub repo -------------------------------------------------
def fetch(repo_id: str, revision: str | None) -> Path:
    """The snapshot folder of a Hub repo holding the files `open_model` reads: the configs first, then the
    model folder's weights (.safetensors where the repo has them, else .bin), pinned to the commit of the first."""
    root = hub.snapshot(repo_id, revision, CONFIG_PATTERNS)
    commit = hub.commit_of(root)
    if not any(root.glob("**/config.json")):
        raise ConversionError(f"Hub repo {repo_id} has no config.json: it is not a diffusers model "
                              "(convert-diffusers reads NCSN++ score models, e.g. google/ncsnpp-ffhq-256)")
    folder = model_folder(root).relative_to(root)
    for name in WEIGHTS:
        if not (root / folder / name).is_file():
            hub.snapshot(repo_id, commit, [(folder / name).as_posix()])  # the same snapshot folder
        if (root / folder / name).is_file():
            break
    return root


def resolve(model_dir: str | os.PathLike, revision: str | None) -> tuple[Path, dict[str, Any]]:
    """(local folder, its Hub origin {repo_id, revision, commit} or {}) of a folder or a Hub repo id."""
    if hub.is_repo_id(model_dir):
        root = fetch(str(model_dir), revision)
        return root, {"repo_id": str(model_dir), "revision": revision or "main", "commit": hub.commit_of(root)}
    if revision is not None:
        raise ConversionError(f"--revision applies to a Hub repo id (org/name); {model_dir} is a local folder")
    return Path(model_dir), {}


def source_record(root: Path, model: DiffusersModel, origin: dict[str, Any]) -> dict[str, Any]:
    """What a conversion read: the Hub origin (repo, revision, commit), the folder, and each file's sha256."""
    files = [root / "model_index.json", model.folder / "config.json", model.weights,
             scheduler_file(root, model.folder)]
    hashes = {p.relative_to(root).as_posix(): hub.sha256(p) for p in files if p is not None and p.is_file()}
    return {**origin, "folder": str(root.resolve()), "files": hashes}


def source_comment(record: dict[str, Any]) -> str:
    """The source record as a YAML comment (predict's config takes no such key): '# ' before each line."""
    text = yaml.safe_dump({"source": record}, sort_keys=False)
    return "# converted by pds-lightning convert-diffusers from:\n" + "".join(f"# {line}\n" for line in text.splitlines())


def check_score_model(config: dict[str, Any], name: str) -> None:
    """Refuse, before anything else, a UNet2DModel of another family (no Skip block at all: e.g. DDPM)."""
    down = list(config.get("down_block_types") or [])
    if down and not any(t in DOWN_BLOCKS for t in down):
        raise ConversionError(
            f"{name} is not an NCSN++ score model: unsupported block type(s) {', '.join(down)} and a "
            f"{config.get('time_embedding_type', 'positional')!r} time embedding (e.g. a DDPM UNet2DModel); "
            "convert-diffusers reads NCSN++ (score_sde) models with Skip / AttnSkip blocks and a 'fourier' "
            "embedding, e.g. google/ncsnpp-ffhq-256")


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
    settings = {**SCHEDULER_DEFAULTS, **scheduler}
    check_step_count(int(settings["num_train_timesteps"]), "scheduler_config.json num_train_timesteps")
    sde = VESDE(float(settings["sigma_min"]), float(settings["sigma_max"]), int(settings["num_train_timesteps"]))
    steps = int(settings["correct_steps"])  # 0: ScoreSdeVePipeline runs no corrector step
    sampler = PC(name="pds", eps=float(settings["sampling_eps"]), pds=PDS(filters="both", alpha=5.0),
                 corrector=Langevin(snr=float(settings["snr"]), steps_per_level=steps) if steps else None)
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


def parameter_names(net: NCSNpp, config: dict[str, Any]) -> Iterator[tuple[str, tuple[str, ...], bool]]:
    """(project name, diffusers names (newest first), transposed) of every network parameter, in the order of
    NCSNpp.all_modules: the one table that conversion and export both read. Refuses norms grouped otherwise."""
    levels = attention_levels(config)
    layout = list(diffusers_layout(len(net.ch_mult), net.num_res_blocks, levels))
    if len(layout) != len(net.all_modules):
        raise RuntimeError(f"layout has {len(layout)} modules, NCSNpp {len(net.all_modules)}; converter and network disagree")
    for index, ((prefix, kind), module) in enumerate(zip(layout, net.all_modules)):
        if not isinstance(module, kind):
            raise RuntimeError(f"all_modules.{index} is a {type(module).__name__}, the layout expects {kind.__name__}")
        check_groups(config, prefix, module)
        for suffix in module.state_dict():
            # Linear stores [out, in], score_sde's NIN [in, out]
            yield (f"all_modules.{index}.{suffix}", tuple(f"{prefix}.{n}" for n in source_names(kind, suffix)),
                   kind is AttnBlock and suffix.endswith(".W"))


def map_state_dict(net: NCSNpp, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The project's state dict from diffusers weights: every parameter mapped, shapes checked, nothing left."""
    target = net.state_dict()
    mapped, used, problems = {"sigmas": target["sigmas"]}, set(), []
    for key, names, transposed in parameter_names(net, config):
        param = target[key]
        found = [n for n in names if n in weights]
        if not found:
            problems.append(f"missing {names[0]}")
            continue
        value = weights[found[0]]
        used.add(found[0])
        if transposed:
            value = value.t()
        if tuple(value.shape) != tuple(param.shape):
            problems.append(f"{found[0]} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
            continue
        mapped[key] = value.to(param.dtype).contiguous().clone()
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
    from pds_lightning.data import Augment, ImageDataModule, Images, Split, Stats

    dm = ImageDataModule(source=str(statistics_from), images=Images(size=shape[1], num_channels=shape[0]),
                         augment=Augment(random_flip=False), split=Split(val_size=0),
                         stats=Stats(num_images=max(num_images, 1), cache_dir=""), num_workers=0)
    dm.setup_images()
    if num_images == 0:
        dm.stats = replace(dm.stats, num_images=len(dm.train_indices))
    dm.setup("fit")
    stats = dm.statistics
    buffers.update(stat_count=torch.tensor(float(stats.count), dtype=torch.float64),
                   stat_power_mean=stats.power_mean.float(), stat_mean=stats.mean.float(),
                   stat_sq_mean=stats.sq_mean.float())
    return buffers


# ---- the way out: NCSNpp -> a ScoreSdeVePipeline folder -----------------------------------------------
PIPELINE_INDEX = {"_class_name": "ScoreSdeVePipeline", "unet": ["diffusers", "UNet2DModel"],
                  "scheduler": ["diffusers", "ScoreSdeVeScheduler"]}
SAFETENSORS_METADATA = {"format": "pt"}  # what diffusers' save_pretrained writes in its .safetensors
EXPORT_IGNORED = {"init_scale"}  # initialisation only: it does not change a trained network's forward


def effective_init_args(net: NCSNpp, spec: dict[str, Any] | None) -> dict[str, Any]:
    """A network's init_args with its class's defaults filled in (DDPMpp's over NCSNpp's), as plain data."""
    import inspect

    args: dict[str, Any] = {}
    for cls in reversed(type(net).__mro__):
        if issubclass(cls, NCSNpp):
            args.update({k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
                         if p.default is not inspect.Parameter.empty})
    args.update((spec or {}).get("init_args") or {})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def unet_config(net_args: dict[str, Any]) -> dict[str, Any]:
    """The UNet2DModel config.json of an NCSN++ (score_sde's field names): `net_init_args` read backwards. Every
    field the converter reads is written, since diffusers' defaults for absent ones are not NCSN++'s."""
    size, nf = int(net_args["image_size"]), int(net_args["nf"])
    channels = [nf * int(m) for m in net_args["ch_mult"]]
    attention = [size // 2 ** i in net_args["attn_resolutions"] for i in range(len(channels))]
    down = {attn: name for name, attn in DOWN_BLOCKS.items()}
    up = {attn: name for name, attn in UP_BLOCKS.items()}
    return {"_class_name": "UNet2DModel", "sample_size": size, "in_channels": net_args["num_channels"],
            "out_channels": net_args["num_channels"], "center_input_sample": not net_args["centered"],
            "time_embedding_type": "fourier", "down_block_types": [down[a] for a in attention],
            "mid_block_type": "UNetMidBlock2D", "up_block_types": [up[a] for a in reversed(attention)],
            "block_out_channels": channels, "layers_per_block": net_args["num_res_blocks"],
            "mid_block_scale_factor": math.sqrt(2.0), "dropout": float(net_args["dropout"]), "act_fn": "silu",
            "attention_head_dim": None, "norm_num_groups": None, "norm_eps": EPS, "add_attention": True}


def exportable(module) -> tuple[dict[str, Any], VESDE]:
    """(UNet2DModel config, VE SDE) of a ScoreModule whose network diffusers computes exactly; refuses in one
    line what a ScoreSdeVePipeline cannot represent, naming the setting."""
    net, sde = module.ema_net, module.sde
    spec = module.hparams.get("net")
    if not isinstance(sde, VESDE):
        raise ConversionError(f"the model's SDE is a {type(sde).__name__}: diffusers' ScoreSdeVeScheduler is the VE "
                              "SDE only, so VP / sub-VP models cannot be exported to diffusers")
    if not isinstance(net, NCSNpp) or not isinstance(spec, dict):
        raise ConversionError(f"the model's network is {(spec or {}).get('class_path', type(net).__name__)}: the "
                              "diffusers export writes NCSN++ networks (pds_lightning.models.NCSNpp) built from a "
                              "config (fit, convert-*)")
    if module.centered or not module.continuous:
        raise ConversionError(f"model centered={module.centered}, continuous={module.continuous}: diffusers' "
                              "ScoreSdeVePipeline samples data in [0, 1] with sigma as the noise input (centered: "
                              "false, continuous: true)")
    ours = effective_init_args(net, spec)
    if ours.get("num_classes"):
        raise ConversionError(f"model.net num_classes={ours['num_classes']}: UNet2DModel's class embedding is not "
                              "NCSN++'s, so class-conditional models cannot be exported to diffusers")
    # NCSN++ attends only at its own resolutions; others listed in attn_resolutions change nothing
    ours["attn_resolutions"] = [r for r in (ours["image_size"] // 2 ** i for i in range(len(ours["ch_mult"])))
                                if r in ours["attn_resolutions"]]
    config = unet_config(ours)
    try:
        theirs = net_init_args(config, sde)
        differ = [k for k in theirs if k not in EXPORT_IGNORED and ours.get(k) != theirs[k]]
        if differ:
            raise ConversionError(
                f"model.net {', '.join(f'{k}={ours.get(k)!r}' for k in differ)} differs from what diffusers' NCSN++ "
                f"layout (UNet2DModel with Skip blocks) computes: {', '.join(f'{k}={theirs[k]!r}' for k in differ)}")
        for _ in parameter_names(net, config):  # refuses norms that diffusers groups otherwise
            pass
    except ConversionError as err:
        raise ConversionError(f"cannot export to diffusers: {err}") from err
    return config, sde


def unet_weights(net: NCSNpp, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's parameters under diffusers' names (`parameter_names`, the converter's table read backwards)."""
    state = net.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, names, transposed in parameter_names(net, config):
        value = state[key].detach().cpu()
        out[names[0]] = (value.t() if transposed else value).contiguous().clone()
    if len(out) != len(state) - 1:  # all but NCSNpp's `sigmas` buffer, which diffusers computes from the scheduler
        raise RuntimeError(f"{len(out)} of {len(state) - 1} network tensors mapped; converter and network disagree")
    return out


def scheduler_of(sde: VESDE, sampler: Any) -> dict[str, Any]:
    """The ScoreSdeVeScheduler config: the SDE, and the PC sampler's Langevin snr, steps and eps where the
    model's sampler has them (ScoreSdeVeScheduler's defaults otherwise)."""
    settings = dict(SCHEDULER_DEFAULTS, num_train_timesteps=sde.N, sigma_min=sde.sigma_min, sigma_max=sde.sigma_max)
    if isinstance(sampler, PC):
        if isinstance(sampler.corrector, Langevin):
            settings.update(snr=sampler.corrector.snr, correct_steps=sampler.corrector.steps_per_level)
        elif sampler.corrector is None:
            settings["correct_steps"] = 0
        if sampler.eps is not None:
            settings["sampling_eps"] = float(sampler.eps)
    return {"_class_name": "ScoreSdeVeScheduler", **settings}


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_diffusers_folder(module, out_dir: str | os.PathLike, *, force: bool = False,
                           inputs: tuple = ()) -> Path:
    """Write a ScoreModule's EMA network and VE SDE as a ScoreSdeVePipeline folder: model_index.json,
    unet/config.json + unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json. The folder
    appears whole or not at all (`fileio.atomic_folder`); an existing one only with `force`, never one that is
    or holds `inputs`. Returns its path."""
    check_new_folder(out_dir, force, inputs)
    config, sde = exportable(module)
    weights = unet_weights(module.ema_net, config)
    from safetensors.torch import save_file

    with atomic_folder(out_dir, force, inputs) as tmp:
        write_json(tmp / "model_index.json", PIPELINE_INDEX)
        write_json(tmp / "unet" / "config.json", config)
        save_file(weights, str(tmp / "unet" / WEIGHTS[0]), metadata=SAFETENSORS_METADATA)
        write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_of(sde, module.sampler))
    return Path(out_dir)


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
            "data": {"images": {"size": size, "num_channels": 3, "centered": False},
                     "predict": {"seeds": "0-15", "batch_size": 4}}}


def convert_diffusers(model_dir: str | os.PathLike, output: str | os.PathLike,
                      statistics_from: str | os.PathLike | None = None, *, statistics_images: int = 0,
                      sigma_min: float | None = None, sigma_max: float | None = None, num_scales: int | None = None,
                      safetensors: bool = False, force: bool = False, revision: str | None = None) -> Path:
    """Convert a diffusers NCSN++ folder or Hub repo id (at `revision`); writes OUTPUT (.ckpt), OUTPUT.yaml (the
    predict config) and, with `safetensors`, OUTPUT.safetensors. Returns the checkpoint path. An output in the
    model or images folder is refused, an existing one unless `force`."""
    output = Path(output)
    outputs, config_path = checkpoint_outputs(output, safetensors, what="OUTPUT"), output.with_suffix(".yaml")
    check_outputs([*outputs, ("the predict config", config_path)], [model_dir, statistics_from], force)
    root, origin = resolve(model_dir, revision)
    if origin:  # a Hub repo id: its snapshot folder in the cache is an input too, known only after the download
        check_outputs([*outputs, ("the predict config", config_path)], [root, statistics_from], force)
    source = open_model(root)
    check_score_model(source.config, str(model_dir))
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
    record = {"diffusers": {"folder": str(root.resolve()), "weights": source.weights.name,
                            "config": source.config, "scheduler": source.scheduler},
              "source": source_record(root, source, origin)}
    checkpoint = lightning_checkpoint(state_dict, hyper_parameters(model_cfg, shape, False), extra=record)
    config = source_comment(record["source"]) + yaml.safe_dump(predict_config(model_cfg, output), sort_keys=False)
    return write_outputs(checkpoint, outputs, extra={config_path: config.encode()})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning convert-diffusers", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("model_dir", help="diffusers folder (config.json + weights, scheduler config), or a Hub repo "
                                          "id org/name, downloaded into the Hugging Face cache (HF_HOME, HF_HUB_OFFLINE)")
    parser.add_argument("--revision", default=None, help="with a Hub repo id: branch, tag or commit (default main)")
    parser.add_argument("output", help="Lightning checkpoint to write (.ckpt); OUTPUT.yaml is the predict config")
    parser.add_argument("--statistics-from", default=None,
                        help="folder of training images: PDS data statistics computed as fit does")
    parser.add_argument("--statistics-images", type=int, default=0, help="images used for them (0: all)")
    parser.add_argument("--safetensors", action="store_true", help="also write OUTPUT.safetensors (no pickle)")
    parser.add_argument("--force", action="store_true", help="replace existing output files (never an input)")
    for name, kind in (("sigma-min", float), ("sigma-max", float), ("num-scales", int)):
        parser.add_argument(f"--{name}", type=kind, default=None, help="VE SDE where the folder has no scheduler")
    args = parser.parse_args(argv)
    path = convert_diffusers(args.model_dir, args.output, args.statistics_from,
                             statistics_images=args.statistics_images, sigma_min=args.sigma_min,
                             sigma_max=args.sigma_max, num_scales=args.num_scales, safetensors=args.safetensors,
                             force=args.force, revision=args.revision)
    print(f"wrote {path} and {path.with_suffix('.yaml')}"
          + (f" and {path.with_suffix('.safetensors')}" if args.safetensors else ""))
    print(f"sample: pds-lightning predict --config {path.with_suffix('.yaml')} --ckpt_path {path}")
    return 0
