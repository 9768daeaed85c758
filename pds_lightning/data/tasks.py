"""Predict inputs of inpainting and colorization: `TaskSettings` (the `data.task` config) and the
(input index, seed) pairs a predict run completes, each with its image and mask.

Masks: 1 (white) = known pixel, 0 (black) = to fill; from a folder / .npz with one mask per image (values
>= 0.5 count as known after resizing), or a built-in shape (`BUILTIN_MASKS`). Colorization takes the gray
axis of each image (the mean of R, G, B; gray images as they are) and fills in the colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from pds_lightning.data.seeds import parse_seed_range
from pds_lightning.sampling.conditional import TASKS
#: Built-in inpainting masks: which region is unknown.
BUILTIN_MASKS = ("center", "left", "right", "top", "bottom")


@dataclass
class TaskSettings:
    """`data.task`: what predict completes. `source`: the images (folder, .npz or embedded name); `masks`:
    one mask per image (inpainting), else the built-in `mask`; `indices`: which inputs ('0-31'; None = all).
    How PDS is kept off the known part is the sampler's: `model.sampler.pds.restrict`."""

    kind: str = "inpaint"
    source: str = ""
    masks: str | None = None
    mask: str = "center"
    indices: str | None = None

    def __post_init__(self):
        if self.kind not in TASKS:
            raise ValueError(f"unknown task kind {self.kind!r}; choose one of {tuple(TASKS)}")
        if not self.source:
            raise ValueError("data.task.source is empty; give the images to complete (a folder, an .npz or 'mnist')")
        if self.mask not in BUILTIN_MASKS:
            raise ValueError(f"unknown built-in mask {self.mask!r}; choose one of {BUILTIN_MASKS} or give masks")
        if self.kind == "colorize" and self.masks is not None:
            raise ValueError("colorization takes no masks (the gray axis is the known part); remove data.task.masks")
        if self.indices is not None:
            parse_seed_range(self.indices)


def builtin_mask(name: str, size: int) -> torch.Tensor:
    """A [1, size, size] 0/1 mask: 'center' hides the centre square of half the side, the others that half."""
    mask = torch.ones(1, size, size)
    q, h = size // 4, size // 2
    region = {"center": (slice(q, q + h), slice(q, q + h)), "left": (slice(None), slice(0, h)),
              "right": (slice(None), slice(h, None)), "top": (slice(0, h), slice(None)),
              "bottom": (slice(h, None), slice(None))}[name]
    mask[(slice(None),) + region] = 0.0
    return mask


class TaskInputs(Dataset):
    """Items {"index", "seed", "image" [C, H, W] in [0, 1], "mask" [1, H, W]} for every (index, seed) pair to do."""

    def __init__(self, settings: TaskSettings, images, masks, seeds: list[int], exclude: set[tuple[int, int]]):
        self.settings, self.images, self.masks = settings, images, masks
        indices = parse_seed_range(settings.indices) if settings.indices is not None else range(len(images))
        if indices and max(indices) >= len(images):
            raise ValueError(f"data.task.indices asks for input {max(indices)} but {settings.source!r} holds "
                             f"{len(images)} images (0-{len(images) - 1})")
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"{len(masks)} masks for {len(images)} images in data.task; give one mask per image")
        self.pairs = [(i, s) for i in indices for s in seeds if (i, s) not in exclude]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        index, seed = self.pairs[k]
        image = self.images[index]
        if self.masks is not None:
            mask = (self.masks[index].mean(0, keepdim=True) >= 0.5).to(image.dtype)
        else:
            mask = builtin_mask(self.settings.mask, image.shape[-1]).to(image.dtype)
        return {"index": index, "seed": seed, "image": image, "mask": mask}


def task_loader(inputs: TaskInputs, batch_size: int) -> DataLoader:
    """Batches of TaskInputs items, each also naming its task kind."""
    settings = inputs.settings

    def collate(items):
        batch = default_collate(items)
        batch.update(kind=settings.kind)
        return batch

    return DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=collate)
