"""`generate`, the one entry point that turns seeds (and a task's known part, and classes) into samples."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from pds_lightning.sampling.base import SampleResult, Sampler
from pds_lightning.sampling.guidance import guided_score
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sde import SDE


def generate(sampler: Sampler, score_fn, sde: SDE, seeds: Sequence[int] | Tensor, shape, statistics=None,
             classes: Sequence[int] | Tensor | None = None, known=None, centered: bool = False) -> SampleResult:
    """One sample per seed, shape [len(seeds), C, H, W]; each depends only on its seed, its class, its known
    part and `sampler`.

    `shape`: the image shape [C, H, W] (or [B, C, H, W]); the device is the seeds' (CPU for a list), or the
    known part's. `statistics`: an ImageStatistics-like object (PDS filters) or None. `classes` (one per seed)
    samples a class-conditional `score_fn(x, t, class_labels)`, guided by `sampler.guidance_scale`. `known`
    (a sampling.known.KnownPart, one row per seed) fills in inpainting / colorization. A PDS alpha chooser
    must be resolved first (pds_lightning.alpha.resolve_alpha). `centered`: the model sees 2 x - 1 (for the
    preconditioners built from the data's moments in model space).
    """
    if not isinstance(sampler, Sampler):
        raise ValueError(f"generate wants a sampler component (e.g. pds_lightning.sampling.PC), got "
                         f"{type(sampler).__name__}; build one from its config with Sampler.from_config")
    seeds_list = seeds.flatten().tolist() if isinstance(seeds, Tensor) else [int(s) for s in seeds]
    device = seeds.device if isinstance(seeds, Tensor) else torch.device("cpu")
    if known is not None:
        device = known.y.device
        shape = tuple(known.y.shape)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4:
        if shape[0] != len(seeds_list):
            raise ValueError(f"shape {shape} has batch {shape[0]} but {len(seeds_list)} seeds were given; give one "
                             "seed per input row")
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"shape must be the image shape [C, H, W], got {shape}")
    sampler.check(sde)  # fail early, with the step-count message
    sampler.check_task(known)
    preconditioner = None
    if sampler.pds is not None:
        preconditioner = sampler.pds.preconditioner(statistics, sampler.name, centered).to(device)
    score_fn = class_score(sampler, score_fn, classes, len(seeds_list), device)
    return sampler(score_fn, sde, (len(seeds_list),) + shape, noise=SeededNoise(seeds_list, device),
                   preconditioner=preconditioner, known=known)


def class_score(sampler: Sampler, score_fn, classes, n: int, device: torch.device):
    """`score_fn` itself without classes, else its guided score for one class per seed."""
    if classes is None:
        if sampler.guidance_scale != 0:
            raise ValueError(f"sampler {sampler.name!r} has guidance_scale {sampler.guidance_scale} but no classes "
                             "were given; pass one class per seed (predict: data.predict.classes) or set "
                             "guidance_scale: 0")
        return score_fn
    num_classes = getattr(score_fn, "num_classes", None)
    if not num_classes:
        raise ValueError("classes were given but the model is not class-conditional (no num_classes); train one "
                         "with model.net.init_args.num_classes, or sample without classes")
    labels = torch.as_tensor(classes, dtype=torch.long, device=device).flatten()
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} classes for {n} seeds; give one class per seed")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"class {int(labels[bad][0])} is out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1}); fix data.predict.classes")
    return guided_score(score_fn, labels, sampler.guidance_scale, null_class=num_classes)
