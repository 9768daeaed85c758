"""`ImageDataModule`'s arguments grouped by concern (`data.images`, `data.augment`, `data.split`, `data.stats`,
`data.predict`), each group a small dataclass that checks its own fields, and the flat keys of older configs,
checkpoints and calls (`OLD_DATA_KEYS`), translated into the groups once (`grouped_data`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from pds_lightning.data.seeds import parse_seed_range
from pds_lightning.data.tasks import Task, TaskSettings


def at_least(low: int, **values: int) -> None:
    """Refuse any of `values` (new key path -> value) below `low`, naming its key."""
    for key, value in values.items():
        if value is not None and value < low:
            rule = "positive" if low == 1 else "non-negative"
            raise ValueError(f"data.{key} must be {rule}, got {value}")


@dataclass(frozen=True)
class Images:
    """The training images' geometry and preparation: square side, channels, crop, model space, uint8 cache."""

    size: int = 32
    num_channels: int | None = None
    convert_channels: bool = True
    allow_upscale: bool = False
    crop_size: int | None = None
    centered: bool = False
    cache_dir: str | None = None

    def __post_init__(self):
        at_least(1, **{"images.size": self.size})
        if self.num_channels not in (None, 1, 3):
            raise ValueError("data.images.num_channels must be 1 or 3 (or None for the source's own), got "
                             f"{self.num_channels}")


@dataclass(frozen=True)
class Augment:
    """Training augmentation: horizontal flip, uniform dequantisation."""

    random_flip: bool = True
    dequantize: bool = False


@dataclass(frozen=True)
class Split:
    """Validation images held out (at most a tenth, drawn with `seed`) and the images the test stage scores."""

    val_size: int = 256
    test_size: int = 0
    seed: int = 0

    def __post_init__(self):
        at_least(0, **{"split.val_size": self.val_size, "split.test_size": self.test_size})


@dataclass(frozen=True)
class Stats:
    """The preconditioner statistics: training images used (0: none), the seed drawing them, their cache folder."""

    num_images: int = 200
    seed: int = 0
    cache_dir: str | None = None

    def __post_init__(self):
        at_least(0, **{"stats.num_images": self.num_images})


@dataclass(frozen=True)
class Predict:
    """Predict's seeds, seeds per batch, classes cycled over the seeds, inpainting / colorization task."""

    seeds: str = "0-63"
    batch_size: int = 16
    classes: str | None = None
    task: Task | TaskSettings | None = None

    def __post_init__(self):
        at_least(1, **{"predict.batch_size": self.batch_size})
        parse_seed_range(self.seeds)  # fail at construction, not at predict time
        if self.classes is not None:
            parse_seed_range(self.classes, what="class", unique=False)


#: The groups, by argument name.
GROUPS = {"images": Images, "augment": Augment, "split": Split, "stats": Stats, "predict": Predict}

#: The flat `data` keys of older configs, checkpoints and calls, and the group field each now is.
OLD_DATA_KEYS = {
    "image_size": "images.size", "num_channels": "images.num_channels",
    "convert_channels": "images.convert_channels", "allow_upscale": "images.allow_upscale",
    "crop_size": "images.crop_size", "centered": "images.centered", "cache_dir": "images.cache_dir",
    "random_flip": "augment.random_flip", "dequantize": "augment.dequantize",
    "val_size": "split.val_size", "test_size": "split.test_size", "split_seed": "split.seed",
    "stats_num_images": "stats.num_images", "stats_seed": "stats.seed", "stats_cache_dir": "stats.cache_dir",
    "seeds": "predict.seeds", "predict_batch_size": "predict.batch_size", "classes": "predict.classes",
    "task": "predict.task",
}


def old_data_keys_warning(old: list[str], where: str) -> str:
    """The one warning line for old flat keys found in `where`: each with its new key."""
    pairs = ", ".join(f"data.{key} -> data.{OLD_DATA_KEYS[key]}" for key in old)
    return f"old flat data keys in {where}: {pairs}; write the grouped keys (the old ones will be removed)"


def grouped_data(data: dict[str, Any], where: str, warn: bool = True) -> dict[str, Any]:
    """`data` (ImageDataModule's init arguments as plain data) with its old flat keys (OLD_DATA_KEYS) moved into
    their groups, with one warning naming each new key. An old key whose group field is also set to another value
    is refused in one line, naming both. A group given as an object counts with the fields it sets (off their
    defaults)."""
    old = [key for key in data if key in OLD_DATA_KEYS]
    if not old:
        return data
    out = {k: v for k, v in data.items() if k not in OLD_DATA_KEYS}
    for key in old:
        group, field = OLD_DATA_KEYS[key].split(".")
        section = set_fields(GROUPS[group], out.get(group))
        if field in section and section[field] != data[key]:
            raise ValueError(f"data.{key}={data[key]!r} contradicts data.{group}.{field}={section[field]!r} in "
                             f"{where}; remove data.{key} (the old key) and keep data.{group}.{field}")
        section[field] = data[key]
        out[group] = section
    if warn:
        warnings.warn(old_data_keys_warning(old, where), UserWarning, stacklevel=3)
    return out


def set_fields(kind: type, value: Any) -> dict[str, Any]:
    """The fields a group's mapping or object sets: all of a mapping's, those of an object off their default."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    defaults = kind()
    return {name: getattr(value, name) for name in kind.__dataclass_fields__
            if getattr(value, name) != getattr(defaults, name)}


def group(kind: type, value: Any) -> Any:
    """A group from its dataclass or its mapping (a checkpoint's plain hyper-parameters)."""
    if isinstance(value, kind):
        return value
    if isinstance(value, dict):
        return kind(**value)
    raise ValueError(f"data group {kind.__name__} wants a mapping of its fields, got {value!r}")


def plain_group(value: Any) -> dict[str, Any]:
    """A group as plain data, a task as its {class_path, init_args}: what a checkpoint's hyper-parameters hold."""
    fields = {name: getattr(value, name) for name in type(value).__dataclass_fields__}
    task = fields.get("task")
    if isinstance(task, Task):
        fields["task"] = task.config()
    return fields


__all__ = ["Augment", "GROUPS", "Images", "OLD_DATA_KEYS", "Predict", "Split", "Stats", "at_least", "group",
           "grouped_data", "old_data_keys_warning", "plain_group", "set_fields"]
