"""The PNG writers of `trainer.predict`: `SampleWriter` and, for inpainting / colorization, `TaskWriter`.

`SampleWriter` writes the images of `trainer.predict` as `{seed // 1000:03d}/{seed:06d}.png`, each file
atomically, skips seeds already on disk (a killed run resumes) and keeps a `manifest.json`.
`TaskWriter` does the same per (input index, seed): `{index:06d}/{seed:06d}.png`.

One output folder holds the samples of one run identity (`run_identity`: sampler settings, model
fingerprint and hyper-parameters, image shape, classes, task, layout, and the numerics: trainer precision,
the model's compile setting, device type, deterministic algorithms), recorded in `manifest.json` before
the first file is written. A predict whose identity differs from the folder's is refused before it writes
anything, naming the difference: its files would otherwise sit beside, and be counted with, samples of
another model or settings. A manifest written before the numerics were recorded is read as what that code
ran by default (`IMPLIED_NUMERICS`: 32-true, no compile, no deterministic algorithms); it recorded no device
type, so any device type resumes it (as before), and the run that completes it records its own. Concurrent
predicts into one folder are safe: temp files carry their writer's pid and host (pds_lightning.fileio), and
only dead writers' temps are removed.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from pds_lightning.fileio import TMP_SUFFIX, remove_stale_temps, write_atomic, write_new
from pds_lightning.images import encode_png, to_uint8

# ---- files ------------------------------------------------------------------------------------------------
def sample_path(output_dir: str | os.PathLike, seed: int) -> Path:
    """Where the PNG of `seed` lives: subfolders of 1000 seeds keep directories small."""
    return Path(output_dir) / f"{seed // 1000:03d}" / f"{seed:06d}.png"


def scan_written_seeds(output_dir: str | os.PathLike, remove_stale_tmp: bool = True) -> list[int]:
    """Seeds whose PNG is present under `output_dir` (sorted); temp files of dead writers are removed.

    Because every PNG is renamed into place only when complete, presence means the file is whole.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    seeds = []
    for sub in root.iterdir():
        if not (sub.is_dir() and sub.name.isdigit()):
            continue
        if remove_stale_tmp:
            remove_stale_temps(sub)
        for f in sub.iterdir():
            if f.suffix == ".png" and f.stem.isdigit() and int(f.stem) // 1000 == int(sub.name):
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
    """None when `output_dir` can be created and written, else a one-line reason with the fix.

    Nothing is created: the probe file goes into the nearest existing folder on the way (where `output_dir`
    would be made), so a predict that fails before its first sample leaves no empty folder behind; the
    folders are made with the first file."""
    root = Path(output_dir)
    existing = root.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write_probe.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return (f"output_dir {str(root)!r} is not writable ({err.strerror or err}); "
                "choose another output directory or fix its permissions")
    return None


class SampleWriteError(RuntimeError):
    """A sample (or the manifest: seed None) could not be written; `written` lists the seeds this process
    completed before."""

    def __init__(self, seed: int | None, path: Path, err: OSError, written: Sequence[int]):
        self.seed, self.path, self.written = seed, path, list(written)
        hint = ("free disk space or use another output directory" if err.errno == errno.ENOSPC
                else "fix the output directory")
        what = f"seed {seed} to {path}" if seed is not None else str(path)
        super().__init__(
            f"writing {what} failed: {err.strerror or err}. This process had written "
            f"{len(self.written)} seeds before ({format_seeds(self.written)}); those files are complete "
            f"and no partial file was left. {hint}, then rerun the same command: finished seeds are skipped.")


# ---- what made a folder's samples ------------------------------------------------------------------------
MANIFEST = "manifest.json"
# The manifest keys that say how the samples were made; a folder's samples share them.
IDENTITY_KEYS = ("settings", "model", "image_shape", "classes", "class_seeds", "task", "layout", "numerics")
#: What a manifest without (some of) the `numerics` entry ran: the defaults of the code that wrote it.
IMPLIED_NUMERICS = {"precision": "32-true", "compile": False, "deterministic_algorithms": False}
#: The module hyper-parameters that decide a sample besides the weights and the sampler settings.
SAMPLING_HPARAMS = ("net", "sde", "continuous", "centered", "image_size", "num_channels")


def plain(value: Any) -> Any:
    """`value` as JSON reads it back (tuples as lists, objects as strings): what a manifest compares."""
    return json.loads(json.dumps(value, default=str))


def settings_dict(module) -> dict | None:
    """The module's sampler settings as a plain dict, compared whole (their format is theirs to change)."""
    sampler = getattr(module, "sampler", None)
    if callable(getattr(sampler, "config", None)):  # a sampler component: {'class_path', 'init_args'}
        return plain(sampler.config())
    return plain(dict(getattr(module, "hparams", {})).get("sampler"))


def model_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of the tensors sampling reads: the state dict less the raw training weights `net.*` when EMA
    weights `ema_net.*` sample (so EMA weights and statistics buffers). Names, dtypes, shapes and bytes count:
    two checkpoints of one config (another step, another seed, a converted release) differ, while one
    checkpoint agrees with itself on any device. One pass over the weights, well under a second for CIFAR-10
    NCSN++; hyper-parameters plus global step would not tell apart two runs of one config."""
    state = module.state_dict()
    sampled_by_ema = any(name.startswith("ema_net.") for name in state)
    digest = hashlib.sha256()
    for name in sorted(state):
        if sampled_by_ema and name.startswith("net."):
            continue
        tensor = state[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return f"sha256:{digest.hexdigest()}"


def numerics(trainer, module) -> dict[str, Any]:
    """The settings that change a sample's bytes for the same weights and sampler: the trainer's precision
    (autocast rounds the network), the model's compile setting (compiled kernels fuse and reorder float ops),
    the device type (CPU and CUDA kernels round differently) and torch's deterministic algorithms."""
    return {"precision": str(trainer.precision),
            "compile": dict(getattr(module, "hparams", {})).get("compile", False),
            "device_type": module.device.type,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def run_identity(trainer, module, layout: str) -> dict[str, Any]:
    """What decides the files of a predict: sampler settings, the model (fingerprint and the hyper-parameters
    the tensors do not hold, e.g. the SDE), image shape, classes with the seed list they are cycled over
    (together they fix each seed's class), the inpainting / colorization task, the file layout and the
    numerics (`numerics`)."""
    predict = getattr(getattr(trainer, "datamodule", None), "predict", None)  # ImageDataModule's data.predict
    classes = getattr(predict, "classes", None)
    task = getattr(predict, "task", None)
    # Only what changes the images beside the weights: training settings (lr, loss, ...) do not.
    hparams = {k: v for k, v in dict(getattr(module, "hparams", {})).items() if k in SAMPLING_HPARAMS}
    return plain({
        "settings": settings_dict(module),
        "model": {"fingerprint": model_fingerprint(module), "hparams": hparams},
        "image_shape": list(getattr(module, "image_shape", [])),
        "classes": classes,
        "class_seeds": getattr(predict, "seeds", None) if classes is not None else None,
        "task": task.config() if callable(getattr(task, "config", None)) else task,  # {class_path, init_args}
        "layout": layout,
        "numerics": numerics(trainer, module),
    })


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}").items()}
    return {prefix: value}


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text[:19] + "..." if len(text) > 22 else text


def with_implied_numerics(recorded: dict, identity: dict) -> dict:
    """`recorded` with the numerics an older manifest leaves out read as IMPLIED_NUMERICS, and its device type,
    which it cannot tell, as this run's."""
    there = recorded.get("numerics", {})
    if not isinstance(there, dict):
        return recorded  # compared as it is: the refusal shows it
    implied = {**IMPLIED_NUMERICS, "device_type": identity["numerics"]["device_type"]}
    return {**recorded, "numerics": {**implied, **there}}


def identity_differences(recorded: dict, identity: dict) -> list[str]:
    """'key: value there -> value now' for each identity entry (nested keys dotted) a manifest records otherwise."""
    missing = object()
    found = []
    recorded = with_implied_numerics(recorded, identity)
    for key in IDENTITY_KEYS:
        if key not in recorded:
            found.append(f"{key}: not recorded there")
            continue
        there, now = _flat(recorded[key], key), _flat(identity[key], key)
        for name in list(now) + [k for k in there if k not in now]:
            a, b = there.get(name, missing), now.get(name, missing)
            if a != b:
                found.append(f"{name}: {'absent' if a is missing else _shown(a)} there -> "
                             f"{'absent' if b is missing else _shown(b)} now")
    return found


def read_manifest(output_dir: str | os.PathLike) -> dict | None:
    """The folder's manifest, None if it has none; an unreadable one is an error (it is the folder's record)."""
    path = Path(output_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        return manifest
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} ({err}), the record of how the samples in {output_dir} were "
                         "made; restore it, or predict into a new output_dir") from err


def refusal(output_dir: str | os.PathLike, manifest: dict | None, identity: dict, num_samples: int) -> str | None:
    """Why a run of `identity` may not write into `output_dir` (one line with the fix), or None."""
    if manifest is None:
        if not num_samples:
            return None
        return (f"output_dir {str(output_dir)!r} holds {num_samples} samples but no {MANIFEST} recording the model "
                "and settings that made them, so they cannot be resumed safely; predict into a new output_dir")
    differences = identity_differences(manifest, identity)
    if not differences:
        return None
    shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
    return (f"output_dir {str(output_dir)!r} holds the samples of another run ({shown}): resuming there would "
            f"mix them; predict into a new output_dir (see its {MANIFEST})")


def earlier_runs(manifest: dict | None, run_id: str) -> list[dict]:
    """The run records of a manifest (its own and those it carries), without the run `run_id`."""
    if manifest is None:
        return []
    own = {k: v for k, v in manifest.items() if k not in IDENTITY_KEYS and k != "earlier_runs"}
    return [r for r in list(manifest.get("earlier_runs", [])) + [own] if r.get("run_id") != run_id]


# ---- prediction writer ----------------------------------------------------------------------------------
class SampleWriter(BasePredictionWriter):
    """Write `predict_step` outputs `{"seeds", "images" in [0, 1], "nfe"}` as one PNG per seed.

    Args:
        output_dir: root folder; PNGs go to `{seed // 1000:03d}/{seed:06d}.png`.
        write_npz: also write one `.npz` shard per batch (`npz/{first:06d}-{last:06d}.npz` with `seeds` and
            uint8 `samples [B, H, W, C]`, score_sde's layout). PNGs are the record of what is done: after a
            resumed run a seed may appear in two shards (deduplicate by `seeds`), never in none.
        fsync: flush every file to disk before its rename (power-loss safety, at a cost per file).

    The folder's `manifest.json` records the run identity (`run_identity`) before the first file is written and
    is completed at the end, with the records of earlier runs into the folder under `earlier_runs`. A run
    whose identity differs from the manifest's is refused before it writes (ValueError naming the difference).
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
        self.identity: dict = {}
        self.run_id = ""
        self._recorded = False  # whether the manifest holds this run's identity
        self._started = False  # whether the predict loop ran (Lightning skips it when no batch is left)
        self._t0 = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "predict":
            return
        self._started = False
        self._check_writable(trainer)
        done = self._scan_and_clean(trainer)
        done = trainer.strategy.broadcast(done, src=0)
        self.existing = set(done)
        dm = trainer.datamodule
        if dm is not None:
            dm.exclude_seeds = set(self.existing)  # read when the predict dataloader is built, after setup
        elif self.existing:
            rank_zero_warn("SampleWriter: no datamodule, so seeds already written are sampled again "
                           "(their files are kept); use ImageDataModule(predict=Predict(seeds=...)) to resume "
                           "efficiently")

    def _check_writable(self, trainer) -> None:
        problem = check_writable(self.output_dir)  # every rank: nodes may mount different file systems
        if not trainer.strategy.reduce_boolean_decision(problem is None, all=True):
            raise PermissionError(problem or "another process could not write to output_dir; see its error")

    def _scan_and_clean(self, trainer) -> list | None:
        """What is on disk (on rank 0); each host's first rank removes its host's dead writers' temps."""
        if trainer.local_rank != 0 and not trainer.is_global_zero:
            return None
        for folder in (self.output_dir, self.output_dir / "npz"):
            if folder.is_dir():
                remove_stale_temps(folder)
        done = self._scan()
        return done if trainer.is_global_zero else None

    def on_predict_start(self, trainer, pl_module) -> None:
        """Refuse, before sampling, a folder whose samples another model or other settings made (the
        weights are loaded by now, unlike at setup)."""
        self.written = []
        self.nfe = None
        self._recorded = False
        self._started = True
        check = self._check_identity(trainer, pl_module) if trainer.is_global_zero else None
        self.identity, problem, self.run_id = trainer.strategy.broadcast(check, src=0)
        if problem:
            raise ValueError(problem)
        self._t0 = time.perf_counter()

    def _check_identity(self, trainer, pl_module) -> tuple[dict, str | None, str]:
        """(this run's identity, why the folder is refused to it or None, a new run id)."""
        identity = run_identity(trainer, pl_module, self.LAYOUT)
        problem = refusal(self.output_dir, read_manifest(self.output_dir), identity, len(self.existing))
        return identity, problem, f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}-{secrets.token_hex(4)}"

    def teardown(self, trainer, pl_module, stage: str) -> None:
        """When no seed was left to sample Lightning skips the predict loop and its hooks: still refuse another
        run's folder, then complete the manifest. Each rank checks for itself (no collectives after the loop)."""
        super().teardown(trainer, pl_module, stage)
        if stage != "predict" or self._started:
            return
        self.identity, problem, self.run_id = self._check_identity(trainer, pl_module)
        if problem:
            raise ValueError(problem)
        self.written, self.nfe, self.info = [], None, {}
        if trainer.is_global_zero:
            self._write_manifest(trainer, total=0, nfe=None, wall=0.0)

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
            self._write(shard, buf.getvalue(), todo[0][1], trainer)
        for (_, seed), img in zip(todo, pixels):
            self._write(sample_path(self.output_dir, seed), encode_png(img), seed, trainer)
            self.written.append(seed)
        self._show_rate(trainer)

    def _run_record(self, trainer, complete: bool) -> dict[str, Any]:
        """This run's entry of the manifest (what the identity does not fix)."""
        return {"run_id": self.run_id, "complete": complete,
                "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                "world_size": trainer.world_size, "npz_shards": self.write_npz}

    def _record_identity(self, trainer) -> None:
        """Make sure the manifest names this run's identity before a file is written: create it (one process
        wins a race) or find it equal; a concurrent run of another identity got there first otherwise."""
        path = self.output_dir / MANIFEST
        manifest = {**self.identity, **self._run_record(trainer, complete=False)}
        try:
            created = write_new(path, (json.dumps(manifest, indent=2) + "\n").encode(), fsync=self.fsync)
        except OSError as err:
            raise SampleWriteError(None, path, err, self.written) from err
        if not created:
            problem = refusal(self.output_dir, read_manifest(self.output_dir), self.identity, 0)
            if problem:
                raise ValueError(problem)
        self._recorded = True

    def _write(self, path: Path, data: bytes, seed: int, trainer) -> None:
        if not self._recorded:
            self._record_identity(trainer)
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
        if trainer.is_global_zero:
            self._write_manifest(trainer, total, nfe, wall)

    def _write_manifest(self, trainer, total: int, nfe: int | None, wall: float) -> None:
        """The folder's manifest at the end of a run: identity, this run, and the runs before it."""
        path = self.output_dir / MANIFEST
        manifest = {
            **self.identity,
            **self._run_record(trainer, complete=True),
            "nfe_per_sample": nfe,
            "num_written": total,
            "num_skipped_existing": len(self.existing),
            "num_on_disk": len(self._scan(remove_stale_tmp=False)),
            "wall_time_s": round(wall, 3),
            "samples_per_s": round(total / wall, 3) if wall > 0 else None,
            "resolved": self.info,
            "earlier_runs": earlier_runs(read_manifest(self.output_dir), self.run_id),
        }
        try:
            write_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode(), fsync=self.fsync)
        except OSError as err:
            raise SampleWriteError(None, path, err, self.written) from err

    def _scan(self, remove_stale_tmp: bool = True) -> list:
        """What is on disk already (seeds here)."""
        return scan_written_seeds(self.output_dir, remove_stale_tmp)


# ---- inpainting / colorization ----------------------------------------------------------------------------
def task_path(output_dir: str | os.PathLike, index: int, seed: int) -> Path:
    """Where the completion of input `index` with `seed` lives."""
    return Path(output_dir) / f"{index:06d}" / f"{seed:06d}.png"


def scan_written_pairs(output_dir: str | os.PathLike, remove_stale_tmp: bool = True) -> list[tuple[int, int]]:
    """(index, seed) pairs whose PNG is present under `output_dir` (sorted); dead writers' temps are removed."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    pairs = []
    for sub in root.iterdir():
        if not (sub.is_dir() and sub.name.isdigit() and len(sub.name) == 6):
            continue
        if remove_stale_tmp:
            remove_stale_temps(sub)
        for f in sub.iterdir():
            if f.suffix == ".png" and f.stem.isdigit():
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
        self._started = False
        self._check_writable(trainer)
        done = self._scan_and_clean(trainer)
        self.existing_pairs = {tuple(p) for p in trainer.strategy.broadcast(done, src=0)}
        self.existing = set(range(len(self.existing_pairs)))  # counted in the manifest
        dm = trainer.datamodule
        if dm is None or getattr(getattr(dm, "predict", None), "task", None) is None:
            raise ValueError("TaskWriter writes inpainting / colorization outputs: set data.predict.task (an Inpaint / "
                             "Colorize class path with its source) or use SampleWriter for unconditional samples")
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
            self._write(task_path(self.output_dir, index, seed), encode_png(img), seed, trainer)
            self.written.append(seed)
        self._show_rate(trainer)

    def _scan(self, remove_stale_tmp: bool = True) -> list:
        return scan_written_pairs(self.output_dir, remove_stale_tmp)
