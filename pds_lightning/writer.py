"""The PNG writers of `trainer.predict`: `SampleWriter` and, for inpainting / colorization, `TaskWriter`.

`SampleWriter` writes the images of `trainer.predict` as `{seed // 1000:03d}/{seed:06d}.png`, each file
atomically, skips seeds already on disk (a killed run resumes) and ends with a `manifest.json`.
`TaskWriter` does the same per (input index, seed): `{index:06d}/{seed:06d}.png`.
"""

from __future__ import annotations

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
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from pds_lightning.fileio import TMP_SUFFIX, write_atomic
from pds_lightning.images import encode_png, to_uint8

# ---- files ------------------------------------------------------------------------------------------------
def sample_path(output_dir: str | os.PathLike, seed: int) -> Path:
    """Where the PNG of `seed` lives: subfolders of 1000 seeds keep directories small."""
    return Path(output_dir) / f"{seed // 1000:03d}" / f"{seed:06d}.png"


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

    LAYOUT = "{seed // 1000:03d}/{seed:06d}.png"

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

    def _checked_images(self, prediction: dict[str, Any], n: int, what: str, non_finite: str) -> torch.Tensor:
        """The batch's images [n, C, H, W], refused whole if mis-shaped or non-finite; records NFE and info."""
        images = prediction["images"]
        if images.dim() != 4 or images.shape[0] != n:
            raise ValueError(f"predict_step must return images [B, C, H, W] for B={n} {what}, "
                             f"got shape {list(images.shape)}")
        if not bool(torch.isfinite(images).all()):
            raise ValueError(f"{non_finite}; nothing was written for them (lower speed_up or alpha)")
        self.nfe = int(prediction.get("nfe", 0))
        self.info = prediction.get("info") or self.info
        return images

    def write_on_batch_end(self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        seeds = [int(s) for s in torch.as_tensor(prediction["seeds"]).reshape(-1).tolist()]
        images = self._checked_images(prediction, len(seeds), "seeds",
                                      f"non-finite sample values for seeds {format_seeds(seeds)}")
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
            "settings": sampler.config() if hasattr(sampler, "config") else None,  # {'class_path', 'init_args'}
            "nfe_per_sample": nfe,
            "image_shape": list(getattr(pl_module, "image_shape", [])),
            "world_size": trainer.world_size,
            "num_written": total,
            "num_skipped_existing": len(self.existing),
            "num_on_disk": len(self._scan(remove_stale_tmp=False)),
            "wall_time_s": round(wall, 3),
            "samples_per_s": round(total / wall, 3) if wall > 0 else None,
            "layout": self.LAYOUT,
            "npz_shards": self.write_npz,
            "resolved": self.info,
            # class-conditional predict: data.classes, cycled over data.seeds in order (ImageDataModule)
            "classes": getattr(getattr(trainer, "datamodule", None), "classes", None),
        }
        write_atomic(self.output_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())

    def _scan(self, remove_stale_tmp: bool = True) -> list:
        """What is on disk already (seeds here)."""
        return scan_written_seeds(self.output_dir, remove_stale_tmp)


# ---- inpainting / colorization ----------------------------------------------------------------------------
def task_path(output_dir: str | os.PathLike, index: int, seed: int) -> Path:
    """Where the completion of input `index` with `seed` lives."""
    return Path(output_dir) / f"{index:06d}" / f"{seed:06d}.png"


def scan_written_pairs(output_dir: str | os.PathLike, remove_stale_tmp: bool = True) -> list[tuple[int, int]]:
    """(index, seed) pairs whose PNG is present under `output_dir` (sorted); stale temp files are removed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    pairs = []
    for sub in root.iterdir():
        if not (sub.is_dir() and sub.name.isdigit() and len(sub.name) == 6):
            continue
        for f in sub.iterdir():
            if f.name.endswith(TMP_SUFFIX) and f.name.startswith("."):
                if remove_stale_tmp:
                    f.unlink(missing_ok=True)
            elif f.suffix == ".png" and f.stem.isdigit():
                pairs.append((int(sub.name), int(f.stem)))
    return sorted(pairs)


class TaskWriter(SampleWriter):
    """Write inpainting / colorization outputs `{"indices", "seeds", "images"}` as `{index:06d}/{seed:06d}.png`.

    Like SampleWriter: atomic files, pairs already on disk skipped (the data module is told, so a killed run
    resumes where it stopped), a manifest at the end. No npz shards.
    """

    LAYOUT = "{index:06d}/{seed:06d}.png"

    def __init__(self, output_dir: str | os.PathLike, write_interval: str = "batch", fsync: bool = False):
        super().__init__(output_dir, write_interval, write_npz=False, fsync=fsync)
        self.existing_pairs: set[tuple[int, int]] = set()

    def setup(self, trainer, pl_module, stage: str) -> None:
        BasePredictionWriter.setup(self, trainer, pl_module, stage)
        if stage != "predict":
            return
        problem = check_writable(self.output_dir)
        if not trainer.strategy.reduce_boolean_decision(problem is None, all=True):
            raise PermissionError(problem or "another process could not write to output_dir; see its error")
        done = self._scan() if trainer.is_global_zero else None
        self.existing_pairs = {tuple(p) for p in trainer.strategy.broadcast(done, src=0)}
        self.existing = set(range(len(self.existing_pairs)))  # counted in the manifest
        dm = trainer.datamodule
        if dm is None or getattr(dm, "task", None) is None:
            raise ValueError("TaskWriter writes inpainting / colorization outputs: set data.task (kind, source) "
                             "or use SampleWriter for unconditional samples")
        dm.exclude_pairs = set(self.existing_pairs)

    def write_on_batch_end(self, trainer, pl_module, prediction: dict[str, Any], batch_indices, batch,
                           batch_idx: int, dataloader_idx: int = 0) -> None:
        pairs = list(zip(torch.as_tensor(prediction["indices"]).reshape(-1).tolist(),
                         torch.as_tensor(prediction["seeds"]).reshape(-1).tolist()))
        images = self._checked_images(prediction, len(pairs), "pairs",
                                      f"non-finite values in the completions of {pairs[:4]}...")
        todo = [(k, p) for k, p in enumerate(pairs) if p not in self.existing_pairs]
        pixels = to_uint8(images[[k for k, _ in todo]]) if todo else []
        for ((index, seed)), img in zip([p for _, p in todo], pixels):
            self._write(task_path(self.output_dir, index, seed), encode_png(img), seed)
            self.written.append(seed)
        self._show_rate(trainer)

    def _scan(self, remove_stale_tmp: bool = True) -> list:
        return scan_written_pairs(self.output_dir, remove_stale_tmp)
