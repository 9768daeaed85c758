"""Training images and predict seeds: `ImageDataModule`.

Image sources (the `source` argument):
  "mnist", "patches"        the embedded default data in <repo>/data (see data/README.md)
  "<folder>"                every png/jpg/jpeg/bmp/webp file below it, recursively
  "<file>.npz"              a uint8 (N, H, W, C) or (N, H, W) array, or float in [0, 1]
  "torchvision:NAME[:cat]"  CIFAR10, MNIST, FashionMNIST, CelebA or LSUN (cat: e.g. bedroom) under `root`
Every source yields float images `[C, H, W]` in [0, 1]; `PreparedImages` brings them to the configured
channels and size, `TrainImages` adds augmentation and maps them to model space.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import functional as TF

from pds_lightning.statistics import ImageStatistics

EMBEDDED = {"mnist": "mnist_32.npz", "patches": "patches_32.npz"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
TORCHVISION_DATASETS = ("CIFAR10", "MNIST", "FashionMNIST", "CelebA", "LSUN")
# ITU-R BT.601 luma, the weights Pillow uses for RGB -> L.
LUMA = (0.299, 0.587, 0.114)  # BT.601 luminance weights of R, G, B


def to_model_space(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """Images in [0, 1] -> the model's space ([-1, 1] when centered)."""
    return x * 2.0 - 1.0 if centered else x


def to_unit_range(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """The inverse of `to_model_space`: model-space images (e.g. samples) -> [0, 1] units."""
    return (x + 1) / 2 if centered else x


def embedded_data_dir() -> Path:
    """<repo>/data: the folder next to the package directory (editable install or source checkout)."""
    return Path(__file__).resolve().parent.parent / "data"


def parse_seed_range(spec: str) -> list[int]:
    """'0-9,20,30-31' -> [0, ..., 9, 20, 30, 31]: comma-separated non-negative integers or a-b ranges (inclusive)."""
    text = str(spec).strip()
    if not text:
        raise ValueError("empty seed range; give e.g. seeds: '0-63' or '0-9,20'")
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match is None:
            raise ValueError(
                f"malformed seed range part {part!r} in {spec!r}: use non-negative integers 'a' or 'a-b', "
                "separated by commas, e.g. '0-9,20,30-31'"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"reversed seed range {part!r} in {spec!r}: write it as '{last}-{first}'")
        seeds.extend(range(first, last + 1))
    duplicates = len(seeds) - len(set(seeds))
    if duplicates:
        raise ValueError(f"seed range {spec!r} lists {duplicates} seed(s) more than once")
    return seeds


# --------------------------------------------------------------------------------------------------------------
# Sources: len(), item i as float [C, H, W] in [0, 1] (native channels and size), describe(i), identity.
# --------------------------------------------------------------------------------------------------------------
def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as float [C, H, W] in [0, 1]: gray modes give 1 channel, every other mode 3 (alpha dropped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32) / 65535.0  # 16-bit gray
        return torch.from_numpy(np.clip(array, 0.0, 1.0))[None]
    image = image.convert("L" if image.mode in ("1", "L", "LA", "F") else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class ArraySource:
    """Images held in an (N, H, W, C) array: the embedded data and .npz files."""

    def __init__(self, path: Path, identity: str):
        self.path = path
        self.identity = identity
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
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
            if images.min() < 0 or images.max() > 1:
                raise ValueError(f"{path}: float images must be in [0, 1], got [{images.min()}, {images.max()}]")
            self.scale = 1.0
        else:
            raise ValueError(f"{path}: images must be uint8 or float in [0, 1], got {images.dtype}")
        self.images = images
        self.native_channels = int(images.shape[-1])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1).float() / self.scale

    def describe(self, i: int) -> str:
        return f"image {i} of {self.path}"


class FolderSource:
    """Every image file below a folder (recursive, sorted by path)."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        self.root = root
        self.files = sorted(
            p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise ValueError(f"image folder {root} holds no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files")
        # Identity: path, names, sizes and modification times; cheap and changes when the data do.
        digest = hashlib.sha256()
        for p in self.files:
            st = p.stat()
            digest.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
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


def open_source(source: str, root: Path, download: bool = False):
    """Resolve the `source` string to one of the source classes above."""
    if source in EMBEDDED:
        path = embedded_data_dir() / EMBEDDED[source]
        if not path.is_file():
            raise FileNotFoundError(
                f"embedded data set {source!r} not found at {path}; install pds_lightning from a source checkout "
                "(pip install -e .) or rebuild it with `python data/build_data.py`"
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


# --------------------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------------------
class PreparedImages(Dataset):
    """Source images as float [C, H, W] in [0, 1] at `image_size` with `num_channels` channels."""

    def __init__(self, source, image_size: int, num_channels: int, convert_channels: bool = True,
                 allow_upscale: bool = False, crop_size: int | None = None):
        self.source, self.image_size, self.num_channels = source, image_size, num_channels
        self.convert_channels, self.allow_upscale, self.crop_size = convert_channels, allow_upscale, crop_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.source[i]
        x = self._channels(x, i)
        if self.crop_size is not None:  # e.g. CelebA's central 140 px crop before resizing (score_sde)
            x = TF.center_crop(x, [self.crop_size, self.crop_size])
        size = self.image_size
        if min(x.shape[-2:]) < size and not self.allow_upscale:
            raise ValueError(
                f"{self.source.describe(i)} is {x.shape[-1]}x{x.shape[-2]} px, smaller than image_size {size}; "
                "set `allow_upscale: true` to resize it up, or lower image_size"
            )
        if min(x.shape[-2:]) != size:
            # Shorter side to `size`; antialiased bilinear weights are non-negative, so [0, 1] is kept.
            x = TF.resize(x, [size], antialias=True)
        if tuple(x.shape[-2:]) != (size, size):
            x = TF.center_crop(x, [size, size])
        return x.clamp_(0.0, 1.0)

    def _channels(self, x: torch.Tensor, i: int) -> torch.Tensor:
        c = x.shape[0]
        if c == self.num_channels:
            return x
        if not self.convert_channels:
            raise ValueError(
                f"{self.source.describe(i)} has {c} channel(s) but num_channels is {self.num_channels}; "
                "set `convert_channels: true` to convert gray <-> RGB, or remove the image"
            )
        if c == 1:
            return x.expand(3, -1, -1).clone()
        weights = torch.tensor(LUMA, dtype=x.dtype).view(3, 1, 1)
        return (x * weights).sum(0, keepdim=True)


class TrainImages(Dataset):
    """A subset of prepared images, augmented (flip, dequantisation) and mapped to model space."""

    def __init__(self, images: PreparedImages, indices: torch.Tensor, random_flip: bool = False,
                 dequantize: bool = False, centered: bool = False):
        self.images, self.indices = images, indices.tolist()
        self.random_flip, self.dequantize, self.centered = random_flip, dequantize, centered

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> torch.Tensor:
        x = self.images[self.indices[k]]
        if self.random_flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.dequantize:
            # Uniform dequantisation as score_sde: (u + 255 x) / 256, u ~ U[0, 1).
            x = (torch.rand_like(x) + x * 255.0) / 256.0
        return to_model_space(x, self.centered)


# --------------------------------------------------------------------------------------------------------------
# The data module
# --------------------------------------------------------------------------------------------------------------
def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ImageDataModule(L.LightningDataModule):
    """Training / validation images in model space, preconditioner statistics, and predict seeds.

    Args:
        source: "mnist", "patches", an image folder, an .npz file, or "torchvision:NAME[:category]".
        root: folder of torchvision datasets; the statistics cache defaults to <root>/stats.
        image_size: side of the square training images (resize the shorter side, then centre-crop).
        num_channels: 1 or 3; None takes the source's own channel count.
        convert_channels: convert gray <-> RGB images to `num_channels` (else reject them).
        allow_upscale: resize images smaller than image_size up (else it is an error).
        crop_size: optional centre crop before resizing (score_sde uses 140 for CelebA).
        centered: model space [-1, 1] instead of [0, 1].
        random_flip, dequantize: training augmentation (horizontal flip; uniform dequantisation).
        val_size: validation images held out of training, at most a tenth of the data (deterministic).
        split_seed: seed of the train / validation split.
        download: let torchvision download a missing dataset (in prepare_data, on one process).
        stats_num_images: training images used to estimate the statistics (0: no statistics).
        stats_seed: seed drawing those images.
        stats_cache_dir: statistics cache folder (default <root or ~/.cache/pds_lightning>/stats); "" disables it.
        seeds: predict seeds, e.g. "0-63" or "0-9,20,30-31".
        predict_batch_size: seeds per predict batch.
    """

    def __init__(
        self,
        source: str = "mnist",
        root: str | None = None,
        image_size: int = 32,
        num_channels: int | None = None,
        convert_channels: bool = True,
        allow_upscale: bool = False,
        crop_size: int | None = None,
        centered: bool = False,
        random_flip: bool = True,
        dequantize: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        val_size: int = 256,
        split_seed: int = 0,
        download: bool = False,
        stats_num_images: int = 200,
        stats_seed: int = 0,
        stats_cache_dir: str | None = None,
        seeds: str = "0-63",
        predict_batch_size: int = 16,
    ):
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if num_channels not in (None, 1, 3):
            raise ValueError(f"num_channels must be 1 or 3 (or None for the source's own), got {num_channels}")
        for name, value in (("batch_size", batch_size), ("predict_batch_size", predict_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        for name, value in (("num_workers", num_workers), ("val_size", val_size), ("stats_num_images", stats_num_images)):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        parse_seed_range(seeds)  # fail at construction, not at predict time
        self.save_hyperparameters()
        self.source, self.image_size, self.num_channels = source, image_size, num_channels
        self.root = Path(root).expanduser() if root else None
        self.centered, self.batch_size, self.num_workers = centered, batch_size, num_workers
        self.seeds, self.predict_batch_size = seeds, predict_batch_size
        self.exclude_seeds: set[int] = set()
        self.statistics: ImageStatistics | None = None
        self.images: PreparedImages | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None

    # -- images -----------------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return self.root if self.root is not None else Path("~/.cache/pds_lightning").expanduser()

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: the only place a download may happen.
        if self.hparams.download and self.source.startswith("torchvision:"):
            open_source(self.source, self.data_root, download=True)

    def setup_images(self) -> "ImageDataModule":
        """Open the source and split it (idempotent); `setup` calls it for every stage but predict."""
        if self.images is not None:
            return self
        hp = self.hparams
        source = open_source(self.source, self.data_root, download=False)
        if self.num_channels is None:
            self.num_channels = source.native_channels
        self.images = PreparedImages(source, self.image_size, self.num_channels, hp.convert_channels,
                                     hp.allow_upscale, hp.crop_size)
        n = len(source)
        n_val = min(hp.val_size, n // 10)
        # Shuffle before splitting: sources may be sorted by class (the embedded MNIST is).
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(hp.split_seed))
        self.val_indices, self.train_indices = perm[:n_val].sort().values, perm[n_val:].sort().values
        return self

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.num_channels is None:
            raise RuntimeError("num_channels is unknown until setup(); set it or call setup('fit') first")
        return (self.num_channels, self.image_size, self.image_size)

    def setup(self, stage: str) -> None:
        if stage == "predict":
            return  # seeds only: sampling needs no images
        self.setup_images()
        if stage in ("fit", "validate") and self.hparams.stats_num_images > 0 and self.statistics is None:
            self.statistics = self._estimate_statistics()

    def train_dataloader(self) -> DataLoader:
        self._require_images()
        hp = self.hparams
        data = TrainImages(self.images, self.train_indices, hp.random_flip, hp.dequantize, self.centered)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        self._require_images()
        data = TrainImages(self.images, self.val_indices, centered=self.centered)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def _require_images(self) -> None:
        if self.images is None:
            raise RuntimeError("ImageDataModule has no images yet: call setup('fit') first")

    # -- statistics ---------------------------------------------------------------------------------------
    def stats_indices(self) -> torch.Tensor:
        """The training-set indices the statistics use: `stats_num_images` drawn with `stats_seed`."""
        hp = self.hparams
        g = torch.Generator().manual_seed(hp.stats_seed)
        pick = torch.randperm(len(self.train_indices), generator=g)[: hp.stats_num_images]
        return self.train_indices[pick]

    def stats_cache_path(self) -> Path | None:
        hp = self.hparams
        if hp.stats_cache_dir == "":
            return None
        folder = Path(hp.stats_cache_dir).expanduser() if hp.stats_cache_dir else self.data_root / "stats"
        count = len(self.stats_indices())
        # The key covers everything that changes the images drawn or their content.
        key = "|".join(map(str, (self.images.source.identity, self.image_size, self.num_channels,
                                 hp.crop_size, hp.allow_upscale, count, hp.stats_seed, hp.val_size, hp.split_seed)))
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.source.rsplit("/", 1)[-1]).strip("-")[:40] or "data"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return folder / f"{slug}_{self.image_size}px_{self.num_channels}ch_{count}img_seed{hp.stats_seed}_{digest}.pt"

    def _estimate_statistics(self) -> ImageStatistics:
        rank, world = _dist_rank_world()
        path = self.stats_cache_path()
        # Rank 0 decides from its cache and tells the others, so that all ranks agree whether to reduce.
        cached = None
        if rank == 0 and path is not None and path.is_file():
            cached = ImageStatistics.load(path).state_dict()
        if world > 1:
            box = [cached]
            dist.broadcast_object_list(box, src=0)
            cached = box[0]
        if cached is not None:
            return ImageStatistics.from_state_dict(cached)

        stats = ImageStatistics(self.image_shape)
        share = Subset(self.images, self.stats_indices()[rank::world].tolist())
        for x in DataLoader(share, batch_size=min(self.batch_size, 64), num_workers=self.num_workers):
            stats.update(x)
        # Reduce on the strategy's device when a Trainer runs us (NCCL needs CUDA tensors).
        trainer = self.trainer
        stats.all_reduce(device=trainer.strategy.root_device if trainer is not None else None)
        if rank == 0 and path is not None:
            stats.save(path)
        return stats

    # -- predict ----------------------------------------------------------------------------------------
    def predict_seeds(self) -> list[int]:
        """The seeds of `seeds` not in `exclude_seeds`, in order."""
        return [s for s in parse_seed_range(self.seeds) if s not in self.exclude_seeds]

    def predict_dataloader(self) -> DataLoader:
        seeds = torch.tensor(self.predict_seeds(), dtype=torch.long)
        return DataLoader(seeds, batch_size=self.predict_batch_size, shuffle=False)

    # -- checkpoint ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"statistics": self.statistics.state_dict()} if self.statistics is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if "statistics" in state_dict:
            self.statistics = ImageStatistics.from_state_dict(state_dict["statistics"])
