"""Image sources: the `source` argument of `ImageDataModule` resolved to an indexable set of images.

  "mnist", "patches"        the embedded default data: data/*.npz, shipped in the wheel (data/README.md)
  "<folder>"                every png/jpg/jpeg/bmp/webp file below it, recursively
  "<file>.npz"              a uint8 (N, H, W, C) or (N, H, W) array, or float in [0, 1]
  "torchvision:NAME[:cat]"  CIFAR10, MNIST, FashionMNIST, CelebA or LSUN (cat: e.g. bedroom) under `root`
Every source yields float images `[C, H, W]` in [0, 1] at its native channels and size, `describe(i)`
for error messages, and an `identity` string that changes when the data do (the statistics cache key).
`labels()` gives class labels for class-conditional training: an npz's `labels` array (the embedded MNIST
digits), a torchvision dataset's targets, or a folder's first-level sub-folder names (sorted, one per class).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pds_lightning.images import pil_to_tensor
from pds_lightning.resources import resource_dir

EMBEDDED = {"mnist": "mnist_32.npz", "patches": "patches_32.npz"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TORCHVISION_DATASETS = ("CIFAR10", "MNIST", "FashionMNIST", "CelebA", "LSUN")


def embedded_data_dir() -> Path:
    """The folder of the embedded data: <repo>/data in a checkout, the wheel's copy when installed from one."""
    return resource_dir("data")


# --------------------------------------------------------------------------------------------------------------
# Sources: len(), item i as float [C, H, W] in [0, 1] (native channels and size), describe(i), identity.
# --------------------------------------------------------------------------------------------------------------
class ArraySource:
    """Images held in an (N, H, W, C) array: the embedded data and .npz files."""

    def __init__(self, path: Path, identity: str):
        self.path = path
        self.identity = identity
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                labels = archive["labels"] if "labels" in archive else None
                if "images" in archive:
                    images = archive["images"]
                elif len(keys) == 1:
                    images = archive[keys[0]]
                else:
                    raise ValueError(f"{path} holds arrays {keys}; name the image array 'images'")
        except (OSError, ValueError, EOFError) as err:
            raise ValueError(f"cannot read image array file {path}: {err}") from err
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            hint = " (channels first? store (N, H, W, C))" if images.ndim == 4 and images.shape[1] in (1, 3) else ""
            raise ValueError(f"{path}: images must be shaped (N, H, W, C) with C 1 or 3, got {images.shape}{hint}")
        if images.shape[0] == 0:
            raise ValueError(f"{path} holds no images")
        if images.dtype == np.uint8:
            self.scale = 255.0
        elif np.issubdtype(images.dtype, np.floating):
            check_float_images(images, path)
            self.scale = 1.0
        else:
            raise ValueError(f"{path}: images must be uint8 or float in [0, 1], got {images.dtype}")
        self.images = images
        self.native_channels = int(images.shape[-1])
        self._labels = labels

    def labels(self) -> tuple[torch.Tensor, list[str]]:
        """(class index per image [N], class names '0'..'K-1') from the archive's integer `labels` array."""
        labels = self._labels
        if labels is None:
            raise ValueError(f"{self.path} has no 'labels' array, so it cannot train a class-conditional model; "
                             "store one integer label per image as 'labels', or set data.conditional: false")
        if labels.shape != (len(self),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(f"{self.path}: 'labels' must hold {len(self)} non-negative integers, got "
                             f"shape {labels.shape} dtype {labels.dtype}")
        return torch.from_numpy(labels.astype(np.int64)), [str(k) for k in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float() / self.scale

    def describe(self, i: int) -> str:
        return f"image {i} of {self.path}"


def check_float_images(images: np.ndarray, path: Path, chunk: int = 1024) -> None:
    """ValueError naming the file and the first image index holding NaN / Inf (which would make the loss, then
    every weight, NaN), or values outside [0, 1]; read in chunks of images, so no array-sized mask is built."""
    nonfinite: list[int] = []
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(min(chunk, len(images) - start), -1)
        nonfinite.extend(start + np.flatnonzero(~np.isfinite(block).all(1)))
    if nonfinite:
        shown = ", ".join(map(str, nonfinite[:5])) + (", ..." if len(nonfinite) > 5 else "")
        raise ValueError(f"{path}: image {nonfinite[0]} holds NaN/Inf values ({len(nonfinite)} image(s) do: {shown}); "
                         "remove or repair them: float images must be finite values in [0, 1]")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"{path}: float images must be in [0, 1], got [{images.min()}, {images.max()}]")


def scan_images(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every image file below `root`, in path order, from one os.scandir walk.

    One stat per file (the scandir entry's), no image opened: a 100k-file folder is scanned in seconds.
    Symlinked folders are not followed (no cycles); symlinked files are.
    """
    found: list[tuple[tuple[str, ...], int, int]] = []
    stack: list[tuple[str, ...]] = [()]
    while stack:
        parts = stack.pop()
        with os.scandir(root.joinpath(*parts)) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(parts + (entry.name,))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    st = entry.stat()
                    found.append((parts + (entry.name,), st.st_size, st.st_mtime_ns))
    found.sort(key=lambda item: item[0])  # by path components, as sorted(Path, ...) orders them
    return [("/".join(parts), size, mtime) for parts, size, mtime in found]


class FolderSource:
    """Every image file below a folder (recursive, sorted by path)."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.root = root
        entries = scan_images(root)
        if not entries:
            raise ValueError(f"image folder {root} holds no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files")
        self.files = [root / rel for rel, _, _ in entries]
        # Identity: path, names, sizes and modification times; cheap and changes when the data do.
        digest = hashlib.sha256()
        for rel, size, mtime_ns in entries:
            digest.update(f"{rel}\0{size}\0{mtime_ns}\n".encode())
        self.identity = f"folder:{root.resolve()}:{len(self.files)}:{digest.hexdigest()}"

    @property
    def native_channels(self) -> int:
        return self[0].shape[0]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            with Image.open(path) as image:
                image.load()
                return pil_to_tensor(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot read image file {path}: {err}") from err

    def describe(self, i: int) -> str:
        return f"image file {self.files[i]}"

    def labels(self) -> tuple[torch.Tensor, list[str]]:
        """(class index per image, class names): the first-level sub-folder of each file, names sorted."""
        tops = [path.relative_to(self.root).parts for path in self.files]
        loose = [p for p in tops if len(p) == 1]
        if loose:
            raise ValueError(f"image folder {self.root} has files outside class sub-folders (e.g. {loose[0][0]}); "
                             "a class-conditional source puts each image in <folder>/<class name>/")
        names = sorted({p[0] for p in tops})
        index = {name: k for k, name in enumerate(names)}
        return torch.tensor([index[p[0]] for p in tops], dtype=torch.long), names


class TorchvisionSource:
    """The training split of a torchvision dataset already on disk under `root`."""

    def __init__(self, name: str, category: str | None, root: Path, download: bool):
        import torchvision.datasets as tvd

        if name not in TORCHVISION_DATASETS:
            raise ValueError(f"unknown torchvision dataset {name!r}; choose one of {', '.join(TORCHVISION_DATASETS)}")
        if (name == "LSUN") != (category is not None):
            raise ValueError(
                "LSUN needs a category, e.g. 'torchvision:LSUN:bedroom'; other datasets take none"
                if name == "LSUN"
                else f"torchvision:{name} takes no category (got {category!r})"
            )
        self.name, self.category, self.root = name, category, root
        try:
            if name == "LSUN":
                self.dataset = tvd.LSUN(str(root), classes=[f"{category}_train"])
            elif name == "CelebA":
                self.dataset = tvd.CelebA(str(root), split="train", target_type=[], download=download)
            else:
                self.dataset = getattr(tvd, name)(str(root), train=True, download=download)
        except (RuntimeError, OSError, ImportError) as err:
            raise FileNotFoundError(self._how_to_get(err)) from err
        self.native_channels = 1 if name in ("MNIST", "FashionMNIST") else 3
        self.identity = f"torchvision:{name}:{category}:{root.resolve()}:{len(self.dataset)}"

    def _how_to_get(self, err: Exception) -> str:
        if self.name == "LSUN":
            how = (
                f"torchvision cannot download LSUN: fetch {self.category}_train_lmdb with the scripts of "
                f"github.com/fyu/lsun, unzip it into {self.root}, and `pip install lmdb`"
            )
        elif self.name == "CelebA":
            how = (
                f"set `download: true` (Google Drive often refuses; else place img_align_celeba/ and the list_*.txt "
                f"files in {self.root / 'celeba'} by hand)"
            )
        else:
            how = f"set `download: true` in the data config to download it to {self.root}, or point `root` at it"
        return f"torchvision dataset {self.name} not found under {self.root} ({err}); {how}"

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.dataset[i][0]
        return pil_to_tensor(image)

    def describe(self, i: int) -> str:
        return f"item {i} of torchvision {self.name} in {self.root}"

    def labels(self) -> tuple[torch.Tensor, list[str]]:
        """(class index per image, class names) from the dataset's `targets` and `classes`."""
        targets = getattr(self.dataset, "targets", None)
        if targets is None:
            raise ValueError(f"torchvision {self.name} has no class targets here; class-conditional training "
                             "supports CIFAR10, MNIST and FashionMNIST (or use a folder per class)")
        labels = torch.as_tensor(targets, dtype=torch.long)
        names = [str(c) for c in getattr(self.dataset, "classes", range(int(labels.max()) + 1))]
        return labels, names


def open_source(source: str, root: Path, download: bool = False):
    """Resolve the `source` string to one of the source classes above."""
    if source in EMBEDDED:
        path = embedded_data_dir() / EMBEDDED[source]
        if not path.is_file():
            raise FileNotFoundError(
                f"embedded data set {source!r} not found at {path}; reinstall pds_lightning (the wheel ships it) "
                "or, in a source checkout, rebuild it with `python data/build_data.py`"
            )
        digest = hashlib.sha256(path.read_bytes()).hexdigest()  # a few MB: cheap, and exact for the cache key
        return ArraySource(path, f"embedded:{source}:{digest}")
    if source.startswith("torchvision:"):
        parts = source.split(":")
        if len(parts) not in (2, 3) or not parts[1]:
            raise ValueError(f"malformed source {source!r}; use 'torchvision:NAME' or 'torchvision:LSUN:category'")
        return TorchvisionSource(parts[1], parts[2] if len(parts) == 3 else None, root, download)
    path = Path(source).expanduser()
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"image array file {path} does not exist")
        st = path.stat()
        return ArraySource(path, f"npz:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    raise FileNotFoundError(
        f"data source {source!r} is neither {' / '.join(map(repr, EMBEDDED))}, 'torchvision:NAME', "
        "an existing image folder, nor an existing .npz file"
    )
