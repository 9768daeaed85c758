"""Predict tasks as components, chosen by `data.predict.task: {class_path, init_args}`: `Inpaint` and
`Colorize`, each with its own operator (what the model is shown, the known part kept while sampling, how the result is
brought into [0, 1]); and the (input index, seed) pairs a predict run completes, each with its image and mask.

Masks: 1 (white) = known pixel, 0 (black) = to fill; from a folder / .npz with one mask per image (values
>= 0.5 count as known after resizing), or a built-in shape (`BUILTIN_MASKS`). Colorization takes the gray
axis of each image (the mean of R, G, B; gray images as they are) and fills in the colour.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from pds_lightning.classpath import spec_of
from pds_lightning.data.seeds import parse_seed_range
from pds_lightning.sampling.conditional import clip_keeping_gray
from pds_lightning.sampling.known import KnownPart, color_basis

#: Built-in inpainting masks: which region is unknown.
BUILTIN_MASKS = ("center", "left", "right", "top", "bottom")


class Task:
    """A predict task (`data.predict.task`): `source` the images (folder, .npz or embedded name), `indices` which
    inputs ('0-31'; None = all). How PDS is kept off the known part is the sampler's: `model.sampler.pds.restrict`.
    A task keeps each constructor argument as an attribute of the same name; `masks` (a source of one mask per
    image, or None) is what the data module opens beside the images."""

    name = ""
    masks: str | None = None

    def __init__(self, source: str = "", indices: str | None = None):
        if not source:
            raise ValueError("data.predict.task.source is empty; give the images to complete (a folder, an .npz or "
                             "'mnist')")
        if indices is not None:
            parse_seed_range(indices)
        self.source, self.indices = source, indices

    def config(self) -> dict:
        """{'class_path', 'init_args'}: what a predict's manifest records of the task (`writer.run_identity`)."""
        return spec_of(self, "data.predict.task")

    def mask_of(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The [1, H, W] 0/1 mask of one input image [C, H, W] in [0, 1] (`mask`: its mask image, or None)."""
        raise NotImplementedError

    def shown(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """What the model is given of a batch of images [B, C, H, W] in [0, 1] (the rest is to fill)."""
        raise NotImplementedError

    def known_part(self, shown: torch.Tensor, masks: torch.Tensor) -> KnownPart:
        """The KnownPart kept while sampling, of the shown images in model space."""
        raise NotImplementedError

    def finish(self, filled: torch.Tensor) -> torch.Tensor:
        """The completions [B, C, H, W] brought into [0, 1]."""
        return filled.clamp(0.0, 1.0)


class Inpaint(Task):
    """Fill in the pixels a mask marks 0: `masks` one mask per image (folder / .npz), else the built-in `mask`."""

    name = "inpaint"

    def __init__(self, source: str = "", masks: str | None = None, mask: str = "center", indices: str | None = None):
        super().__init__(source, indices)
        if mask not in BUILTIN_MASKS:
            raise ValueError(f"unknown built-in mask {mask!r}; choose one of {BUILTIN_MASKS} or give masks")
        self.masks, self.mask = masks, mask

    def mask_of(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is not None:
            return (mask.mean(0, keepdim=True) >= 0.5).to(image.dtype)
        return builtin_mask(self.mask, image.shape[-1]).to(image.dtype)

    def shown(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return images * masks

    def known_part(self, shown: torch.Tensor, masks: torch.Tensor) -> KnownPart:
        if masks is None:
            raise ValueError("inpainting needs a mask (1 = known pixel, 0 = to fill)")
        return KnownPart(shown, masks)  # the known pixels kept bit for bit


class Colorize(Task):
    """Fill in the colour of RGB images from their gray axis (R + G + B) / 3, which stays exact."""

    name = "colorize"

    def mask_of(self, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return torch.ones_like(image[:1])  # every pixel's gray is known

    def shown(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return images.mean(1, keepdim=True).expand_as(images)

    def known_part(self, shown: torch.Tensor, masks: torch.Tensor) -> KnownPart:
        if shown.shape[1] != 3:
            raise ValueError(f"colorization needs RGB images (3 channels), got {shown.shape[1]}; set "
                             "data.images.num_channels: 3 and a model trained on colour images")
        known = torch.zeros_like(shown[:1])
        known[:, 0] = 1.0  # the first coordinate of color_basis is the gray axis
        return KnownPart(shown, known, color_basis())

    def finish(self, filled: torch.Tensor) -> torch.Tensor:
        return clip_keeping_gray(filled).clamp(0.0, 1.0)  # a plain clamp would change the known gray


#: The task classes of the old `data.predict.task.kind` values.
TASK_KINDS = {"inpaint": Inpaint, "colorize": Colorize}


@dataclass
class TaskSettings:
    """The `data.predict.task` of older configs ({kind, source, masks, mask, indices}); `task()` is its component,
    what ImageDataModule turns it into once (with a deprecation warning)."""

    kind: str = "inpaint"
    source: str = ""
    masks: str | None = None
    mask: str = "center"
    indices: str | None = None

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; choose one of {tuple(TASK_KINDS)}")
        if self.kind == "colorize" and self.masks is not None:
            raise ValueError("colorization takes no masks (the gray axis is the known part); remove "
                             "data.predict.task.masks")
        self.task()  # the component's own checks

    def task(self) -> Task:
        if self.kind == "colorize":
            return Colorize(self.source, self.indices)
        return Inpaint(self.source, self.masks, self.mask, self.indices)


def task_component(task: Task | TaskSettings | None) -> Task | None:
    """`data.predict.task` as a component: an old {kind: ...} mapping is translated once, with one line of
    warning."""
    if not isinstance(task, TaskSettings):
        return task
    component = task.task()
    warnings.warn(f"data.predict.task kind: {task.kind} is deprecated; write data.predict.task: {{class_path: "
                  f"pds_lightning.data.tasks.{type(component).__name__}, init_args: {{source: ...}}}}",
                  DeprecationWarning, stacklevel=3)
    return component


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

    def __init__(self, task: Task, images, masks, seeds: list[int], exclude: set[tuple[int, int]]):
        self.task, self.images, self.masks = task, images, masks
        indices = parse_seed_range(task.indices) if task.indices is not None else range(len(images))
        if indices and max(indices) >= len(images):
            raise ValueError(f"data.predict.task.indices asks for input {max(indices)} but {task.source!r} holds "
                             f"{len(images)} images (0-{len(images) - 1})")
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"{len(masks)} masks for {len(images)} images in data.predict.task; give one mask per "
                             "image")
        self.pairs = [(i, s) for i in indices for s in seeds if (i, s) not in exclude]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict:
        index, seed = self.pairs[k]
        image = self.images[index]
        mask = self.task.mask_of(image, None if self.masks is None else self.masks[index])
        return {"index": index, "seed": seed, "image": image, "mask": mask}


def task_loader(inputs: TaskInputs, batch_size: int) -> DataLoader:
    """Batches of TaskInputs items, each also carrying its task (the operator predict applies) and its name."""
    task = inputs.task

    def collate(items):
        batch = default_collate(items)
        batch.update(kind=task.name, task=task)
        return batch

    return DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=collate)
