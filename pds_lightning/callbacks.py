"""Lightning callbacks of the generation side.

`SamplingCallback` samples a fixed set of seeds at the end of validation (EMA weights, every rank its
share), logs one image grid per sampler setting and the sample metrics. `SampleWriter` writes the
images of `trainer.predict` as `{seed // 1000:03d}/{seed:06d}.png`, each file atomically, skips seeds
already on disk (a killed run resumes) and ends with a `manifest.json`.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import nn

from pds_lightning.data import to_unit_range
from pds_lightning.fileio import TMP_SUFFIX, write_atomic
from pds_lightning.metrics import FeatureMetrics, make_feature_extractor, metric_name, spectral_error
from pds_lightning.sampling.settings import SamplerSettings

# ---- files ------------------------------------------------------------------------------------------------


def sample_path(output_dir: str | os.PathLike, seed: int) -> Path:
    """Where the PNG of `seed` lives: subfolders of 1000 seeds keep directories small."""
    return Path(output_dir) / f"{seed // 1000:03d}" / f"{seed:06d}.png"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images `[B, C, H, W]` in [0, 1] -> uint8 `[B, H, W, C]`, rounding to nearest (as torchvision's save_image)."""
    x = images.detach().float().clamp(0.0, 1.0).mul(255.0).add(0.5).floor()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def encode_png(image_hwc: np.ndarray) -> bytes:
    """Lossless 8-bit PNG bytes of one uint8 `[H, W, C]` image (C = 1 grey, 3 RGB, 4 RGBA)."""
    arr = image_hwc[..., 0] if image_hwc.shape[-1] == 1 else image_hwc
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def scan_written_seeds(output_dir: str | os.PathLike, remove_stale_tmp: bool = True) -> list[int]:
    """Seeds whose PNG is present under `output_dir` (sorted); stale temp files of killed runs are removed.

    Because every PNG is renamed into place only when complete, presence means the file is whole.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    seeds = []
    for sub in root.iterdir():
        if not (sub.is_dir() and sub.name.isdigit()):
            continue
        for f in sub.iterdir():
            if f.name.endswith(TMP_SUFFIX) and f.name.startswith("."):
                if remove_stale_tmp:
                    f.unlink(missing_ok=True)
            elif f.suffix == ".png" and f.stem.isdigit() and int(f.stem) // 1000 == int(sub.name):
                seeds.append(int(f.stem))
    return sorted(seeds)


def format_seeds(seeds: Sequence[int], limit: int = 20) -> str:
    """Compact ranges, e.g. [0, 1, 2, 5] -> '0-2,5' (at most `limit` ranges, then '...')."""
    ranges: list[str] = []
    s = sorted(seeds)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        ranges.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    if len(ranges) > limit:
        ranges = ranges[:limit] + ["..."]
    return ",".join(ranges) if ranges else "none"


def check_writable(output_dir: str | os.PathLike) -> str | None:
    """None when `output_dir` can be created and written, else a one-line reason with the fix."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=root, prefix=".write_probe.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return (f"output_dir {str(root)!r} is not writable ({err.strerror or err}); "
                "choose another output directory or fix its permissions")
    return None


class SampleWriteError(RuntimeError):
    """A sample could not be written; `written` lists the seeds this process completed before."""

    def __init__(self, seed: int, path: Path, err: OSError, written: Sequence[int]):
        self.seed, self.path, self.written = seed, path, list(written)
        hint = ("free disk space or use another output directory" if err.errno == errno.ENOSPC
                else "fix the output directory")
        super().__init__(
            f"writing seed {seed} to {path} failed: {err.strerror or err}. This process had written "
            f"{len(self.written)} seeds before ({format_seeds(self.written)}); those files are complete "
            f"and no partial file was left. {hint}, then rerun the same command: finished seeds are skipped.")


# ---- prediction writer ----------------------------------------------------------------------------------
class SampleWriter(BasePredictionWriter):
    """Write `predict_step` outputs `{"seeds", "images" in [0, 1], "nfe"}` as one PNG per seed.

    Args:
        output_dir: root folder; PNGs go to `{seed // 1000:03d}/{seed:06d}.png`.
        write_npz: also write one `.npz` shard per batch (`npz/{first:06d}-{last:06d}.npz` with `seeds` and
            uint8 `samples [B, H, W, C]`, score_sde's layout). PNGs are the record of what is done: after a
            resumed run a seed may appear in two shards (deduplicate by `seeds`), never in none.
        fsync: flush every file to disk before its rename (power-loss safety, at a cost per file).
    """

    def __init__(self, output_dir: str | os.PathLike, write_interval: str = "batch", write_npz: bool = False,
                 fsync: bool = False):
        if write_interval != "batch":
            raise ValueError(f"SampleWriter writes per batch; got write_interval={write_interval!r}, use 'batch'")
        super().__init__(write_interval)
        self.output_dir = Path(output_dir)
        self.write_npz = write_npz
        self.fsync = fsync
        self.existing: set[int] = set()
        self.written: list[int] = []
        self.nfe: int | None = None
        self.info: dict = {}  # how the sampler settings were resolved (e.g. alpha: auto)
        self._t0 = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        problem = check_writable(self.output_dir)  # every rank: nodes may mount different file systems
        if not trainer.strategy.reduce_boolean_decision(problem is None, all=True):
            raise PermissionError(problem or "another process could not write to output_dir; see its error")
        done = scan_written_seeds(self.output_dir) if trainer.is_global_zero else None
        done = trainer.strategy.broadcast(done, src=0)
        self.existing = set(done)
        dm = trainer.datamodule
        if dm is not None:
            dm.exclude_seeds = set(self.existing)  # read when the predict dataloader is built, after setup
        elif self.existing:
            rank_zero_warn("SampleWriter: no datamodule, so seeds already written are sampled again "
                           "(their files are kept); use ImageDataModule(seeds=...) to resume efficiently")

    def on_predict_start(self, trainer, pl_module) -> None:
        self.written = []
        self.nfe = None
        self._t0 = time.perf_counter()

    def write_on_batch_end(self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        seeds = [int(s) for s in torch.as_tensor(prediction["seeds"]).reshape(-1).tolist()]
        images = prediction["images"]
        if images.dim() != 4 or images.shape[0] != len(seeds):
            raise ValueError(f"predict_step must return images [B, C, H, W] for B={len(seeds)} seeds, "
                             f"got shape {list(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"non-finite sample values for seeds {format_seeds(seeds)}; nothing was written "
                             "for them (lower speed_up or alpha)")
        self.nfe = int(prediction.get("nfe", 0))
        self.info = prediction.get("info") or self.info
        todo = [(k, s) for k, s in enumerate(seeds) if s not in self.existing]
        if not todo:
            return
        pixels = to_uint8(images[[k for k, _ in todo]])
        if self.write_npz:
            shard = self.output_dir / "npz" / f"{todo[0][1]:06d}-{todo[-1][1]:06d}.npz"
            buf = io.BytesIO()
            np.savez(buf, seeds=np.array([s for _, s in todo], dtype=np.int64), samples=pixels)
            self._write(shard, buf.getvalue(), seed=todo[0][1])
        for (_, seed), img in zip(todo, pixels):
            self._write(sample_path(self.output_dir, seed), encode_png(img), seed)
            self.written.append(seed)
        self._show_rate(trainer)

    def _write(self, path: Path, data: bytes, seed: int) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, fsync=self.fsync)
        except OSError as err:
            raise SampleWriteError(seed, path, err, self.written) from err

    def _show_rate(self, trainer) -> None:
        """Seeds done and an estimate of the global rate (this rank's rate times the world size) on the bar."""
        bar = getattr(trainer.progress_bar_callback, "_predict_progress_bar", None)
        if bar is None or not hasattr(bar, "set_postfix"):
            return
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        bar.set_postfix({"seeds": len(self.written) * trainer.world_size,
                         "seeds/s": f"{len(self.written) * trainer.world_size / elapsed:.2f}"}, refresh=False)

    def on_predict_end(self, trainer, pl_module) -> None:
        device = pl_module.device
        # Collectives: after them every rank has finished writing.
        total = int(trainer.strategy.reduce(torch.tensor(float(len(self.written)), device=device), reduce_op="sum"))
        nfe = int(trainer.strategy.reduce(torch.tensor(float(self.nfe or 0), device=device), reduce_op="max"))
        wall = time.perf_counter() - self._t0
        if not trainer.is_global_zero:
            return
        sampler = getattr(pl_module, "sampler", None)
        manifest = {
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "settings": dataclasses.asdict(sampler) if dataclasses.is_dataclass(sampler) else None,
            "nfe_per_sample": nfe,
            "image_shape": list(getattr(pl_module, "image_shape", [])),
            "world_size": trainer.world_size,
            "num_written": total,
            "num_skipped_existing": len(self.existing),
            "num_on_disk": len(scan_written_seeds(self.output_dir, remove_stale_tmp=False)),
            "wall_time_s": round(wall, 3),
            "samples_per_s": round(total / wall, 3) if wall > 0 else None,
            "layout": "{seed // 1000:03d}/{seed:06d}.png",
            "npz_shards": self.write_npz,
            "resolved": self.info,
        }
        write_atomic(self.output_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())


# ---- validation sampling ---------------------------------------------------------------------------------
class SamplingCallback(Callback):
    """Sample fixed seeds with each sampler setting at the end of validation and log grids and metrics.

    Seed k of `seed_offset + range(num_samples)` goes to rank k % world_size, so each sample is drawn once
    whatever the world size; images are gathered (padded to equal length, padding dropped) for the grids
    and the spectral error. FID / KID (with a feature extractor or Inception weights) sum each rank's
    features. Logged: `val/spectral_error/<name>`, `val/fid@<n>/<name>`, `val/kid@<n>/<name>`,
    `val/nfe/<name>`, `val/sample_time_s/<name>` and images `samples/<name>` (+ `samples/side_by_side`).
    """

    def __init__(self, settings: Sequence[SamplerSettings], num_samples: int = 64, seed_offset: int = 0,
                 every_n_epochs: int = 1, grid_nrow: int = 8, fid_feature_extractor: nn.Module | None = None,
                 inception_weights: str | None = None, num_reference: int | None = None):
        if not settings:
            raise ValueError("SamplingCallback needs at least one sampler setting")
        names = [s.name for s in settings]
        if len(set(names)) != len(names):
            raise ValueError(f"sampler setting names must be unique (they name the logged metrics), got {names}")
        if num_samples < 1 or seed_offset < 0 or every_n_epochs < 1 or grid_nrow < 1:
            raise ValueError("num_samples, every_n_epochs and grid_nrow must be >= 1 and seed_offset >= 0, got "
                             f"{num_samples}, {every_n_epochs}, {grid_nrow}, {seed_offset}")
        self.settings = list(settings)
        self.num_samples = num_samples
        self.seed_offset = seed_offset
        self.every_n_epochs = every_n_epochs
        self.grid_nrow = grid_nrow
        self.num_reference = num_reference
        self.features = make_feature_extractor(fid_feature_extractor, inception_weights)
        if self.features is not None and num_samples < 2:
            raise ValueError("FID needs num_samples >= 2")
        self._feature_metrics: FeatureMetrics | None = None
        self._reference_done = False

    # -- hook ------------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        rank, world = trainer.global_rank, trainer.world_size
        device = pl_module.device
        seeds = torch.arange(self.seed_offset, self.seed_offset + self.num_samples, device=device)
        mine = seeds[rank::world]
        per_rank = -(-self.num_samples // world)
        stats = getattr(pl_module, "data_statistics", None)
        if stats is None:
            rank_zero_warn("SamplingCallback: the model has no data statistics, so no spectral error is logged")
        if self.features is not None:
            self._prepare_reference(trainer, pl_module)
        grids = []
        for setting in self.settings:
            images, nfe, seconds = self._sample(pl_module, setting, mine)
            nfe = int(trainer.strategy.reduce(torch.tensor(float(nfe), device=device), reduce_op="max"))
            seconds = float(trainer.strategy.reduce(torch.tensor(seconds, device=device), reduce_op="max"))
            everyone = self._gather(pl_module, images, mine, per_rank, world)
            values = {f"val/nfe/{setting.name}": float(nfe), f"val/sample_time_s/{setting.name}": seconds}
            if stats is not None:
                values[f"val/spectral_error/{setting.name}"] = spectral_error(everyone, stats.power_mean)
            if self._feature_metrics is not None:
                fm = self._feature_metrics
                fm.update(images, real=False)
                scores = fm.compute()
                fm.reset()
                for kind, v in scores.items():
                    values[metric_name(kind, self.num_samples, setting.name)] = v
            for key, v in values.items():
                # Identical on every rank already; the mean over ranks keeps it and lets every rank see it.
                pl_module.log(key, v, on_epoch=True, sync_dist=True)
            grids.append((setting.name, self._grid(everyone)))
        if trainer.is_global_zero:
            self._log_images(trainer, grids)

    # -- pieces -----------------------------------------------------------------------------------------------
    def _sample(self, pl_module, setting, seeds: torch.Tensor) -> tuple[torch.Tensor, int, float]:
        """This rank's images `[n, C, H, W]` in [0, 1], the NFE and the seconds taken."""
        if seeds.numel() == 0:  # more ranks than seeds
            return torch.zeros(0, *pl_module.image_shape, device=pl_module.device), 0, 0.0
        sync = torch.cuda.synchronize if pl_module.device.type == "cuda" else (lambda *a: None)
        sync()
        t0 = time.perf_counter()
        result = pl_module.sample(setting, seeds)
        sync()
        return result.x.float(), int(result.nfe), time.perf_counter() - t0

    @staticmethod
    def _gather(pl_module, images: torch.Tensor, seeds: torch.Tensor, per_rank: int, world: int) -> torch.Tensor:
        """All ranks' images ordered by seed; padding rows (seed -1) keep shapes equal and are dropped."""
        if world == 1:
            return images[seeds.argsort()]
        pad = per_rank - images.shape[0]
        images = torch.cat([images, images.new_zeros(pad, *images.shape[1:])])
        seeds = torch.cat([seeds, seeds.new_full((pad,), -1)])
        all_images = pl_module.all_gather(images).reshape(-1, *images.shape[1:])
        all_seeds = pl_module.all_gather(seeds).reshape(-1)
        valid = all_seeds >= 0
        all_images, all_seeds = all_images[valid], all_seeds[valid]
        return all_images[all_seeds.argsort()]

    def _grid(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.utils import make_grid

        return make_grid(images.float().cpu(), nrow=self.grid_nrow, padding=2, pad_value=1.0)

    def _log_images(self, trainer, grids: list[tuple[str, torch.Tensor]]) -> None:
        """One grid per setting and, for several settings, all grids side by side (same seed, same place)."""
        items = list(grids)
        if len(grids) > 1:
            gap = torch.ones(grids[0][1].shape[0], grids[0][1].shape[1], 4)
            joined = [t for _, g in grids for t in (g, gap)][:-1]
            items.append(("side_by_side", torch.cat(joined, dim=-1)))
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                for name, grid in items:
                    experiment.add_image(f"samples/{name}", grid, trainer.global_step, dataformats="CHW")

    def _prepare_reference(self, trainer, pl_module) -> None:
        """Features of the reference images, once: image k of the validation set goes to rank k % world."""
        device = pl_module.device
        if self._feature_metrics is None:
            self._feature_metrics = FeatureMetrics(self.features, pl_module.image_shape,
                                                   kid_subset_size=min(1000, self.num_samples))
        fm = self._feature_metrics.to(device)
        if self._reference_done:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "val_dataloader"):
            raise ValueError("FID / KID in SamplingCallback need a datamodule with a val_dataloader for reference images")
        rank, world = trainer.global_rank, trainer.world_size
        limit = self.num_reference
        seen = 0
        for batch in dm.val_dataloader():
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if limit is not None:
                x = x[: max(limit - seen, 0)]
            first = (rank - seen) % world  # the first row of this batch whose global index is rank mod world
            mine = x[first::world].to(device).float()
            fm.update(to_unit_range(mine, pl_module.centered), real=True)
            seen += x.shape[0]
            if limit is not None and seen >= limit:
                break
        self._reference_done = True
