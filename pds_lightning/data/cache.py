"""Pre-resized image cache: a source decoded, resized and cropped once to the training size, kept as uint8.

The cache is one `.npy` array of N records (`cache_dtype`): an image's uint8 pixels (C, H, W) and their CRC32,
written atomically (`pds_lightning.fileio`) and read as a memory map, so workers share the page cache and no
decoded image is held in Python memory. Each image is checked against its CRC32 when read, so changed bytes in
the data section (a disk or copy error) are named with the image instead of training on them, at no extra I/O.
Its file name carries a hash of the source's identity (for folders: every file's path, size and mtime) and of
the preparation options, so a changed file or option selects another cache file and the stale one is unused. A
file that does not validate (truncated, foreign, another shape, an older format without checksums:
`cache_problem`) is rebuilt by the data module.
"""

from __future__ import annotations

import hashlib
import re
import zlib
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


def cache_dtype(shape: tuple[int, int, int, int]) -> np.dtype:
    """One record of the cache of images `shape` (N, C, H, W): the uint8 pixels and their CRC32."""
    return np.dtype([("pixels", np.uint8, tuple(shape[1:])), ("crc32", "<u4")])


def cache_problem(path: Path, shape: tuple[int, int, int, int]) -> str | None:
    """Why the file at `path` cannot be the cache of images `shape` (unreadable, truncated, another shape or
    type), or None when it can. The pixels are checked against their CRC32 when read (`CachedImages`), not here
    (that would read them all)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        return f"is unreadable or truncated ({' '.join(str(err).split())})"
    if not isinstance(array, np.ndarray):
        return "is not a .npy array"
    if array.dtype != cache_dtype(shape) or array.shape != tuple(shape[:1]):
        return (f"holds {array.dtype} {array.shape}, not {shape[0]} records of uint8 {tuple(shape[1:])} images with "
                "their CRC32")
    return None


def crc32(pixels: np.ndarray) -> int:
    """CRC32 of one image's uint8 pixels (C-order bytes)."""
    return zlib.crc32(np.ascontiguousarray(pixels).tobytes())


def build_cache(images, path: Path, num_workers: int = 0, batch_size: int = 64) -> Path:
    """Write every prepared image of `images` (a `PreparedImages`) to `path` as uint8; no partial file on error."""
    shape = cache_shape(images)
    loader = DataLoader(_Indexed(images), batch_size=batch_size, num_workers=num_workers)
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=cache_dtype(shape), shape=shape[:1])
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
            start, pixels = int(first[0]), q.to(torch.uint8).numpy()
            array["pixels"][start:start + len(x)] = pixels
            array["crc32"][start:start + len(x)] = [crc32(image) for image in pixels]
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
        record = self._array[i]
        pixels = np.array(record["pixels"])
        if crc32(pixels) != int(record["crc32"]):
            raise ValueError(f"image cache {self.path}: image {i} ({self.source.describe(i)}) does not match its "
                             "CRC32 (the file changed after it was written: a disk or copy error); delete it to rebuild")
        return torch.from_numpy(pixels).float().div_(255.0)
