"""Pre-resized image cache: a source decoded, resized and cropped once to the training size, kept as uint8.

The cache is one `.npy` array (N, C, H, W), uint8, written atomically (`pds_lightning.fileio`) and read as a
memory map, so workers share the page cache and no decoded image is held in Python memory. Its file name
carries a hash of the source's identity (for folders: every file's path, size and mtime) and of the
preparation options, so a changed file or option selects another cache file and the stale one is unused. A file
that does not validate (truncated, foreign, another shape: `cache_problem`) is rebuilt by the data module.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pds_lightning.fileio import atomic_path

# Bump when the preparation in PreparedImages changes: old caches then stop matching.
PREPARATION = "resize-shorter-bilinear-antialias/center-crop/round-8bit/v1"


def cache_key(images) -> str:
    """Hash of the source identity and of every option that changes the prepared pixels."""
    fields = (PREPARATION, images.source.identity, images.image_size, images.num_channels, images.convert_channels,
              images.allow_upscale, images.crop_size)
    return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()[:20]


def cache_path(folder: Path, source_name: str, images) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", source_name.rstrip("/").rsplit("/", 1)[-1]).strip("-")[:40] or "data"
    return Path(folder) / f"{slug}_{images.image_size}px_{images.num_channels}ch_{cache_key(images)}.npy"


def cache_shape(images) -> tuple[int, int, int, int]:
    """(N, C, H, W) of the cache of `images` (a `PreparedImages`)."""
    return (len(images), images.num_channels, images.image_size, images.image_size)


def cache_problem(path: Path, shape: tuple[int, int, int, int]) -> str | None:
    """Why the file at `path` cannot be the uint8 cache of shape `shape` (unreadable, truncated, another
    shape or type), or None when it can. The pixels themselves are not checked (that would read them all)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        return f"is unreadable or truncated ({' '.join(str(err).split())})"
    if not isinstance(array, np.ndarray):
        return "is not a .npy array"
    if array.dtype != np.uint8 or array.shape != tuple(shape):
        return f"holds {array.dtype} {array.shape}, not uint8 {tuple(shape)}"
    return None


def build_cache(images, path: Path, num_workers: int = 0, batch_size: int = 64) -> Path:
    """Write every prepared image of `images` (a `PreparedImages`) to `path` as uint8; no partial file on error."""
    shape = cache_shape(images)
    loader = DataLoader(_Indexed(images), batch_size=batch_size, num_workers=num_workers)
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        for first, x in loader:
            levels = x.mul(255.0)
            q = levels.round()
            bad = (levels - q).abs().flatten(1).amax(1) > 1e-3
            if bad.any():
                i = int(first[bad.nonzero()[0, 0]])
                raise ValueError(
                    f"{images.source.describe(i)} is not 8-bit (values between the 256 levels) and the image cache "
                    "stores uint8; unset `cache_dir` for this source"
                )
            start = int(first[0])
            array[start:start + len(x)] = q.to(torch.uint8).numpy()
        array.flush()
        del array
    return path


class _Indexed(Dataset):
    """(index, image) pairs, so that an error can name the file."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return i, self.images[i]


class CachedImages(Dataset):
    """The images of a cache file as float [C, H, W] in [0, 1]; stands in for the `PreparedImages` it was made of."""

    def __init__(self, path: Path, prepared):
        self.path, self.source = Path(path), prepared.source
        self.image_size, self.num_channels = prepared.image_size, prepared.num_channels
        self._array = None
        problem = cache_problem(self.path, cache_shape(prepared))
        if problem:
            raise ValueError(f"image cache {self.path} {problem}; delete it to rebuild")

    def __len__(self) -> int:
        return len(self.source)

    def __getstate__(self):  # workers open their own memory map
        return {**self.__dict__, "_array": None}

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[i])).float().div_(255.0)
