"""`ImageDataModule`: training / validation images in model space, their statistics, and predict seeds.

`PreparedImages` brings a source's images (`sources.py`) to the configured channels and size,
`TrainImages` adds augmentation and maps them to model space; predict batches are seeds (`seeds.py`).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms.v2 import functional as TF

from pds_lightning.data.cache import CachedImages, build_cache, cache_path, cache_problem, cache_shape
from pds_lightning.data.loading import EpochSampler, ResumableLoader, default_num_workers
from pds_lightning.data.seeds import classes_for_seeds, parse_seed_range, seed_loader
from pds_lightning.data.sources import open_source
from pds_lightning.data.settings import (GROUPS, OLD_DATA_KEYS, Augment, Images, Predict, Split, Stats, at_least,
                                         group, grouped_data, plain_group)
from pds_lightning.data.tasks import TaskInputs, task_component, task_loader
from pds_lightning.distributed import rank_world
from pds_lightning.images import rgb_to_gray, to_model_space
from pds_lightning.likelihood import dequantize
from pds_lightning.statistics import ImageStatistics


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
                f"{self.source.describe(i)} is {x.shape[-1]}x{x.shape[-2]} px, smaller than the image size {size}; "
                "set `allow_upscale: true` to resize it up, or lower the image size"
            )
        if min(x.shape[-2:]) != size:
            # Shorter side to `size`; antialiased bilinear weights are non-negative, so [0, 1] is kept. Rounded to
            # the 256 levels of the 8-bit sources, so the uint8 image cache (cache.py) holds exactly these values.
            x = TF.resize(x, [size], antialias=True).mul_(255.0).round_().div_(255.0)
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
        return rgb_to_gray(x)


class TrainImages(Dataset):
    """A subset of prepared images, augmented (flip, dequantisation) and mapped to model space.

    Indexed by k, or by (k, seed) pairs (the training sampler's, `EpochSampler(draw_seeds=True)`): the flip and
    the dequantisation noise then come from a generator seeded by `seed` alone, not from the global RNG of
    whichever process loads the sample, so they are the same with any num_workers and after a resume.
    """

    def __init__(self, images: PreparedImages, indices: torch.Tensor, random_flip: bool = False,
                 dequantize: bool = False, centered: bool = False, labels: torch.Tensor | None = None):
        self.images, self.indices, self.labels = images, indices.tolist(), labels
        self.random_flip, self.dequantize, self.centered = random_flip, dequantize, centered

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        k, seed = key if isinstance(key, tuple) else (key, None)
        x = self.images[self.indices[k]]
        augments = self.random_flip or self.dequantize
        generator = torch.Generator().manual_seed(seed) if seed is not None and augments else None
        if self.random_flip and torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        if self.dequantize:
            # Uniform dequantisation as score_sde. Its noise is drawn by shape, not like x: it must not depend on
            # the memory layout (a cropped view and a cached copy get the same noise).
            x = dequantize(x, generator)
        x = to_model_space(x, self.centered)
        return x if self.labels is None else (x, self.labels[self.indices[k]])


# --------------------------------------------------------------------------------------------------------------
# The data module
# --------------------------------------------------------------------------------------------------------------
class ImageDataModule(L.LightningDataModule):
    """Training / validation images in model space, preconditioner statistics, and predict seeds.

    Args:
        source: "mnist", "patches", an image folder, an .npz file, or "torchvision:NAME[:category]".
        root: folder of torchvision datasets; the statistics cache defaults to <root>/stats.
        download: let torchvision download a missing dataset (in prepare_data, on one process).
        conditional: batches are (images, class labels) for a class-conditional model (labels from the source:
            the embedded MNIST digits, torchvision targets, or one sub-folder per class); False: images only.
        batch_size: training / validation / test images per batch.
        num_workers: loader worker processes; None: the available CPUs less one, at most 8 (0: load in-process).
        shuffle_seed: seed of the training order and augmentation, which are functions of (shuffle_seed, epoch)
            so that a resumed fit continues mid-epoch with the batches it would have had; None: rank 0's
            torch.initial_seed() (set by seed_everything).
        images: size (side of the square images: the shorter side resized, then centre-cropped), num_channels
            (1 or 3; None: the source's own), convert_channels (gray <-> RGB, else such images are refused),
            allow_upscale (resize smaller images up, else refused), crop_size (centre crop before resizing;
            score_sde uses 140 for CelebA), centered (model space [-1, 1], else [0, 1]), cache_dir (a pre-resized
            uint8 cache of the source, decoded once and memory-mapped, rebuilt when a source file or a
            preparation option changes; None: no cache).
        augment: random_flip (horizontal flip), dequantize (uniform dequantisation) of training images.
        split: val_size (validation images held out, at most a tenth of the data), test_size (the first images
            the test stage, `pds-lightning likelihood`, scores; 0 = all), seed (of the train / validation split).
        stats: num_images (training images the statistics are estimated from; 0: no statistics), seed (drawing
            them), cache_dir (default <root or ~/.cache/pds_lightning>/stats; "" disables the cache).
        predict: seeds (e.g. "0-63" or "0-9,20,30-31"), batch_size (seeds per predict batch), classes (per seed,
            cycled over the seeds in order, e.g. "0-9" or "3,3,7", for a class-conditional model; None samples
            unconditionally), task (inpainting / colorization, `data.tasks.Inpaint` / `Colorize` by class_path,
            the old {kind: ...} form translated once: outputs per (input, seed)).
        **old: the flat keys of older versions (`settings.OLD_DATA_KEYS`, e.g. image_size=28, seeds="0-9"),
            moved into their groups with a warning.
    """

    def __init__(
        self,
        source: str = "mnist",
        root: str | None = None,
        download: bool = False,
        conditional: bool = False,
        batch_size: int = 64,
        num_workers: int | None = None,
        shuffle_seed: int | None = None,
        images: Images = Images(),
        augment: Augment = Augment(),
        split: Split = Split(),
        stats: Stats = Stats(),
        predict: Predict = Predict(),
        **old: Any,
    ):
        super().__init__()
        given = {"images": images, "augment": augment, "split": split, "stats": stats, "predict": predict}
        if old:
            unknown = sorted(set(old) - set(OLD_DATA_KEYS))
            if unknown:
                raise TypeError(f"ImageDataModule got unexpected keyword argument(s) {', '.join(unknown)}")
            given = grouped_data({**given, **old}, "ImageDataModule(...)")
        at_least(1, batch_size=batch_size)
        at_least(0, num_workers=num_workers)
        groups = {name: group(GROUPS[name], value) for name, value in given.items()}
        groups["predict"] = replace(groups["predict"], task=task_component(groups["predict"].task))
        self.images, self.augment, self.split, self.stats, self.predict = (groups[name] for name in GROUPS)
        self.save_hyperparameters()
        # Plain data in the hyper-parameters (checkpoints load with weights_only=True), one key per group.
        for name in (*OLD_DATA_KEYS, "old"):
            self.hparams.pop(name, None)
        self.hparams.update({name: plain_group(getattr(self, name)) for name in GROUPS})
        self.source, self.download, self.conditional = source, download, conditional
        self.root = Path(root).expanduser() if root else None
        self.batch_size, self.shuffle_seed = batch_size, shuffle_seed
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.exclude_seeds: set[int] = set()
        self.exclude_pairs: set[tuple[int, int]] = set()  # (input index, seed) done, set by TaskWriter
        self.statistics: ImageStatistics | None = None
        self.labels: torch.Tensor | None = None  # class per source image (conditional)
        self.class_names: list[str] | None = None
        self.prepared: PreparedImages | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None

    # -- images -----------------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return self.root if self.root is not None else Path("~/.cache/pds_lightning").expanduser()

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node: the only place a download may happen.
        if self.download and self.source.startswith("torchvision:"):
            open_source(self.source, self.data_root, download=True)

    def setup_images(self) -> "ImageDataModule":
        """Open the source and split it (idempotent); `setup` calls it for every stage but predict."""
        if self.prepared is not None:
            return self
        source = open_source(self.source, self.data_root, download=False)
        if self.images.num_channels is None:
            self.images = replace(self.images, num_channels=source.native_channels)
        im = self.images
        self.prepared = PreparedImages(source, im.size, im.num_channels, im.convert_channels, im.allow_upscale,
                                       im.crop_size)
        if im.cache_dir:
            self.prepared = self._cached(self.prepared)
        if self.conditional:
            self.labels, self.class_names = source.labels()
        n = len(source)
        n_val = min(self.split.val_size, n // 10)
        # Shuffle before splitting: sources may be sorted by class (the embedded MNIST is).
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split.seed))
        self.val_indices, self.train_indices = perm[:n_val].sort().values, perm[n_val:].sort().values
        return self

    def _cached(self, images: PreparedImages) -> CachedImages:
        """The cache of `images`, built by rank 0 when no file matches its key or the file does not validate
        (rebuilt with a warning naming it); the other ranks wait for it."""
        path = cache_path(Path(self.images.cache_dir).expanduser(), self.source, images)
        rank, world = rank_world()
        if rank == 0:
            problem = cache_problem(path, cache_shape(images)) if path.is_file() else None
            if problem:
                warnings.warn(f"image cache {path} {problem}; rebuilding it", stacklevel=2)
            if problem or not path.is_file():
                build_cache(images, path, self.num_workers, min(self.batch_size, 64))
        if world > 1:
            dist.barrier()
        return CachedImages(path, images)

    @property
    def num_classes(self) -> int | None:
        """Classes of a conditional source (after setup), else None."""
        return len(self.class_names) if self.class_names is not None else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.images.num_channels is None:
            raise RuntimeError("data.images.num_channels is unknown until setup(); set it or call setup('fit') first")
        return (self.images.num_channels, self.images.size, self.images.size)

    def setup(self, stage: str) -> None:
        if stage == "predict":
            return  # seeds only: sampling needs no images
        self.setup_images()
        if stage in ("fit", "validate") and self.stats.num_images > 0 and self.statistics is None:
            self.statistics = self._estimate_statistics()

    def train_dataloader(self) -> DataLoader:
        self._require_images()
        data = TrainImages(self.prepared, self.train_indices, self.augment.random_flip, self.augment.dequantize,
                           self.images.centered, self.labels)
        rank, world = rank_world()
        seed = self.shuffle_seed if self.shuffle_seed is not None else torch.initial_seed() % 2**62
        if world > 1 and self.shuffle_seed is None:  # ranks seeded differently must still share one permutation
            box = [seed]
            dist.broadcast_object_list(box, src=0)
            seed = box[0]
        sampler = EpochSampler(data, seed, num_replicas=world, rank=rank, draw_seeds=True)
        return ResumableLoader(data, sampler, self.batch_size, self._train_batches_done, drop_last=False,
                               **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        self._require_images()
        data = TrainImages(self.prepared, self.val_indices, centered=self.images.centered, labels=self.labels)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, **self._loader_options())

    def _loader_options(self) -> dict:
        """Workers (kept across epochs), and pinned host memory when the trainer runs on CUDA."""
        trainer = self.trainer
        on_cuda = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0, "pin_memory": on_cuda}

    def _train_batches_done(self) -> int | None:
        """Training batches the fit has consumed in this epoch (Lightning's count, without its prefetched batch)."""
        trainer = self.trainer
        return None if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def test_dataloader(self) -> DataLoader:
        """Every image of the source (or the first `test_size`) in model space, in order: what bits/dim scores."""
        self._require_images()
        test_size, n = self.split.test_size, len(self.prepared)
        data = TrainImages(self.prepared, torch.arange(n if test_size == 0 else min(test_size, n)),
                           centered=self.images.centered)
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, **self._loader_options())

    def _require_images(self) -> None:
        if self.prepared is None:
            raise RuntimeError("ImageDataModule has no images yet: call setup('fit') first")

    # -- statistics ---------------------------------------------------------------------------------------
    def stats_indices(self) -> torch.Tensor:
        """The training-set indices the statistics use: `stats.num_images` drawn with `stats.seed`."""
        g = torch.Generator().manual_seed(self.stats.seed)
        pick = torch.randperm(len(self.train_indices), generator=g)[: self.stats.num_images]
        return self.train_indices[pick]

    def stats_cache_path(self) -> Path | None:
        im, st, sp = self.images, self.stats, self.split
        if st.cache_dir == "":
            return None
        folder = Path(st.cache_dir).expanduser() if st.cache_dir else self.data_root / "stats"
        count = len(self.stats_indices())
        # The key covers everything that changes the images drawn or their content (its text is the file name's
        # digest: kept as it was, so that caches written before the grouping stay valid).
        key = "|".join(map(str, (self.prepared.source.identity, im.size, im.num_channels,
                                 im.crop_size, im.allow_upscale, count, st.seed, sp.val_size, sp.seed)))
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.source.rsplit("/", 1)[-1]).strip("-")[:40] or "data"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return folder / f"{slug}_{im.size}px_{im.num_channels}ch_{count}img_seed{st.seed}_{digest}.pt"

    def _estimate_statistics(self) -> ImageStatistics:
        rank, world = rank_world()
        path = self.stats_cache_path()
        # Rank 0 decides from its cache and tells the others, so that all ranks agree whether to reduce.
        cached = None
        if rank == 0 and path is not None and path.is_file():
            cached = self._cached_statistics(path)
        if world > 1:
            box = [cached]
            dist.broadcast_object_list(box, src=0)
            cached = box[0]
        if cached is not None:
            return ImageStatistics.from_state_dict(cached)

        stats = ImageStatistics(self.image_shape)
        share = Subset(self.prepared, self.stats_indices()[rank::world].tolist())
        for x in DataLoader(share, batch_size=min(self.batch_size, 64), num_workers=self.num_workers):
            stats.update(x)
        # Reduce on the strategy's device when a Trainer runs us (NCCL needs CUDA tensors).
        trainer = self.trainer
        stats.all_reduce(device=trainer.strategy.root_device if trainer is not None else None)
        if rank == 0 and path is not None:
            stats.save(path)
        return stats

    def _cached_statistics(self, path: Path) -> dict | None:
        """The state of the statistics cache at `path`, or None with a warning naming the file when it does not
        validate (unreadable, another image shape or count, or moments no image set gives, which
        `ImageStatistics.load` refuses): the caller recomputes and rewrites it."""
        expected = len(self.stats_indices())
        try:
            stats = ImageStatistics.load(path)
        except ValueError as err:  # unreadable, or values no image set gives (non-finite, negative power, ...)
            problem = f"cannot be used ({' '.join(str(err).split())})"
        else:
            if stats.shape != self.image_shape:
                problem = f"holds statistics of images {stats.shape}, not {self.image_shape}"
            elif stats.count != expected:
                problem = f"holds statistics of {stats.count} images, not {expected}"
            else:
                return stats.state_dict()
        warnings.warn(f"statistics cache {path} {problem}; recomputing it", stacklevel=2)
        return None

    # -- predict ----------------------------------------------------------------------------------------
    def predict_seeds(self) -> list[int]:
        """The seeds of `predict.seeds` not in `exclude_seeds`, in order."""
        return [s for s in parse_seed_range(self.predict.seeds) if s not in self.exclude_seeds]

    def predict_dataloader(self) -> DataLoader:
        p = self.predict
        if p.task is not None:
            return task_loader(self.task_inputs(), p.batch_size)
        seeds = self.predict_seeds()
        if p.classes is None:
            return seed_loader(seeds, p.batch_size)
        by_seed = self.predict_classes()
        return seed_loader(seeds, p.batch_size, [by_seed[s] for s in seeds])

    def predict_classes(self) -> dict[int, int]:
        """The class of every seed of `predict.seeds` (`predict.classes` cycled in seed-list order), excluded
        ones too."""
        p = self.predict
        return classes_for_seeds(parse_seed_range(p.seeds), parse_seed_range(p.classes, "class", unique=False))

    # -- inpainting / colorization --------------------------------------------------------------------------
    def task_images(self, source: str, channels: int | None) -> PreparedImages:
        """A task's images (or masks) at the model's size, with `channels` channels (None: their own)."""
        opened = open_source(source, self.data_root, download=False)
        return PreparedImages(opened, self.images.size, channels or opened.native_channels, True,
                              self.images.allow_upscale, self.images.crop_size)

    def task_inputs(self) -> TaskInputs:
        """The (input index, seed) pairs of `predict.task` still to do, with their images and masks."""
        task = self.predict.task
        images = self.task_images(task.source, self.images.num_channels)
        masks = self.task_images(task.masks, 1) if task.masks is not None else None
        return TaskInputs(task, images, masks, parse_seed_range(self.predict.seeds), self.exclude_pairs)

    # -- checkpoint ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"statistics": self.statistics.state_dict()} if self.statistics is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if "statistics" in state_dict:
            self.statistics = ImageStatistics.from_state_dict(state_dict["statistics"])
