"""Image moments from which the PDS preconditioner filters are built.

`ImageStatistics` accumulates, over images in [0, 1], the per-channel, per-pixel / per-frequency moments
    power_mean = mean |fft2(x)|^2   (unshifted, torch's default forward normalisation)
    mean       = mean x
    sq_mean    = mean x^2
in float64 sums, so batches can be streamed and the partial results of several processes summed
(`all_reduce`). The official raw statistics of the PDS code are `freq_statistic()` and
`space_statistic()`; these two methods are the only place in the package where those formulas live.
"""

from __future__ import annotations

import io

import os
import pickle
from typing import Mapping, Sequence

import torch
import torch.distributed as dist

from pds_lightning.distributed import is_distributed
from pds_lightning.fileio import first_line, write_atomic

MOMENTS = ("power_mean", "mean", "sq_mean")
#: What to do with a statistics file that cannot be read.
_FIX = "use a file written by ImageStatistics.save, or delete a statistics cache file to estimate it again"


class ImageStatistics:
    """Streaming, all-reducible moments of images shaped `shape = (C, H, W)` with values in [0, 1]."""

    def __init__(self, shape: Sequence[int], device: torch.device | str | None = None):
        if len(shape) != 3 or any(int(s) < 1 for s in shape):
            raise ValueError(f"ImageStatistics needs shape (C, H, W) of positive sizes, got {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        device = torch.device("cpu") if device is None else torch.device(device)
        self.count = 0
        # Running sums (not means): sums add exactly across batches and across processes.
        self._sums = {k: torch.zeros(self.shape, dtype=torch.float64, device=device) for k in MOMENTS}

    # -- accumulation --------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x: torch.Tensor) -> "ImageStatistics":
        """Add a batch `x` of images `[B, C, H, W]` with values in [0, 1]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"expected images [B, {', '.join(map(str, self.shape))}], got {list(x.shape)}")
        if x.shape[0] == 0:
            return self
        x = x.detach().to(torch.float64)
        lo, hi = x.min().item(), x.max().item()
        # Centred data ([-1, 1]) gives different statistics than the official ones; refuse it loudly.
        if not (lo >= 0.0 and hi <= 1.0):
            raise ValueError(
                f"image statistics need values in [0, 1], got range [{lo:.4g}, {hi:.4g}]; "
                "pass un-centred images (x + 1) / 2 if they are in [-1, 1]"
            )
        # Squared magnitude per image first, then the mean: not the square of a mean magnitude.
        power = torch.fft.fft2(x).abs().square()
        device = self.device
        self._sums["power_mean"] += power.sum(0).to(device)
        self._sums["mean"] += x.sum(0).to(device)
        self._sums["sq_mean"] += x.square().sum(0).to(device)
        self.count += x.shape[0]
        return self

    @property
    def device(self) -> torch.device:
        return self._sums["mean"].device

    def _moment(self, key: str) -> torch.Tensor:
        return self._sums[key] / max(self.count, 1)

    @property
    def power_mean(self) -> torch.Tensor:
        """mean over images of |fft2(x)|^2, `[C, H, W]` float64 (zeros while `count == 0`)."""
        return self._moment("power_mean")

    @property
    def mean(self) -> torch.Tensor:
        """mean over images of x, `[C, H, W]` float64."""
        return self._moment("mean")

    @property
    def sq_mean(self) -> torch.Tensor:
        """mean over images of x^2, `[C, H, W]` float64."""
        return self._moment("sq_mean")

    # -- the official raw statistics ---------------------------------------------------------------------
    def _require_data(self) -> None:
        if self.count == 0:
            raise RuntimeError("ImageStatistics is empty (count == 0): update() it with images first")

    def freq_statistic(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Official frequency statistic log(1 + mean |fft2(x)|^2), `[C, H, W]` (float32 as the .npy files)."""
        self._require_data()
        return torch.log1p(self.power_mean).to(dtype)

    def space_statistic(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Official space statistic mean x^2, `[C, H, W]`."""
        self._require_data()
        return self.sq_mean.to(dtype)

    # -- distributed ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def all_reduce(self, device: torch.device | str | None = None) -> "ImageStatistics":
        """Sum counts and sums over all processes of the default group (no-op when not distributed).

        The reduction runs on `device` (default: the current CUDA device for NCCL, else the CPU), since
        NCCL only reduces CUDA tensors and gloo is happiest with CPU tensors; results return to `self.device`.
        """
        if not is_distributed():
            return self
        if device is None:
            nccl = dist.get_backend() == dist.Backend.NCCL
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        home = self.device
        # One flat message: the count (exact in float64 up to 2^53) followed by the three sums.
        flat = torch.cat(
            [torch.tensor([float(self.count)], dtype=torch.float64, device=home)]
            + [self._sums[k].reshape(-1) for k in MOMENTS]
        ).to(device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = flat.to(home)
        self.count = int(round(flat[0].item()))
        for k, chunk in zip(MOMENTS, flat[1:].split(self._sums["mean"].numel())):
            self._sums[k] = chunk.reshape(self.shape).clone()
        return self

    # -- persistence ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """`count` (int64 scalar) and the three moments (float64 `[C, H, W]`, on the CPU)."""
        state = {"count": torch.tensor(self.count, dtype=torch.int64)}
        state.update({k: self._moment(k).cpu() for k in MOMENTS})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in ("count",) + MOMENTS if k not in state]
        if missing:
            raise KeyError(f"ImageStatistics state is missing {missing}")
        for k in MOMENTS:
            if tuple(state[k].shape) != self.shape:
                raise ValueError(f"ImageStatistics state {k!r} has shape {tuple(state[k].shape)}, expected {self.shape}")
        count = int(state["count"])
        if count < 0:
            raise ValueError(f"ImageStatistics state has a negative count {count}")
        problem = moments_problem({k: state[k] for k in MOMENTS})
        if problem:
            raise ValueError(f"ImageStatistics state {problem}: not moments of images in [0, 1]")
        self.count = count
        for k in MOMENTS:
            self._sums[k] = state[k].detach().to(self.device, torch.float64) * count

    @classmethod
    def from_moments(
        cls,
        count: int | torch.Tensor,
        power_mean: torch.Tensor,
        mean: torch.Tensor,
        sq_mean: torch.Tensor,
    ) -> "ImageStatistics":
        """Rebuild statistics from stored moments (e.g. a checkpoint's `stat_*` buffers)."""
        stats = cls(tuple(power_mean.shape), device=power_mean.device)
        stats.load_state_dict({"count": torch.as_tensor(count), "power_mean": power_mean, "mean": mean, "sq_mean": sq_mean})
        return stats

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "ImageStatistics":
        if "mean" not in state:
            raise KeyError("ImageStatistics state is missing 'mean'")
        stats = cls(tuple(state["mean"].shape))
        stats.load_state_dict(state)
        return stats

    def save(self, path: str | os.PathLike) -> None:
        """Write `state_dict()` to `path` atomically (temp file in the same folder, then rename). Serialised in
        memory first, so a full disk is an OSError naming `path` (torch.save would raise its own RuntimeError)."""
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageStatistics":
        """Read a file written by `save` (tensors only: weights_only=True)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # torch's message advises weights_only=False, which would run whatever code an untrusted file holds
            raise ValueError(f"cannot read image statistics from {path}: the tensors-only reader refused it (a "
                             f"corrupt file, or pickled objects that could run code: do not load it otherwise); "
                             f"{_FIX}") from err
        except Exception as err:  # a truncated or foreign file: say which one
            reason = first_line(err).split(". ")[0]  # torch's first sentence, not its advice after it
            raise ValueError(f"cannot read image statistics from {path} ({type(err).__name__}: {reason}); "
                             f"{_FIX}") from err
        if not isinstance(state, Mapping):
            raise ValueError(f"{path} does not hold an ImageStatistics state dict")
        try:
            return cls.from_state_dict(state)
        except (KeyError, ValueError) as err:  # missing moments, another shape, values no image set gives
            raise ValueError(f"image statistics file {path}: {str(err).strip(chr(34) + chr(39))}") from err

    def __repr__(self) -> str:
        return f"ImageStatistics(shape={self.shape}, count={self.count})"


def mode_variance(statistics, centered: bool = False, floor: float = 1e-10, who: str = "the mode variances",
                  advice: str = "") -> torch.Tensor:
    """Variance of each unitary Fourier mode of the data in model space, float64 [C, H, W]:
    lam(k) = (power_mean(k) - |fft2(mean)(k)|^2) / (H W), floored at floor * max(lam) (no mode exactly
    deterministic); `centered`: the model sees 2 x - 1, so lam scales by 4. `who` (what needs them) starts and
    `advice` ends the errors."""
    if getattr(statistics, "count", 0) <= 0:
        raise ValueError(f"{who} needs data statistics with count > 0; compute them (ImageStatistics){advice}")
    power = statistics.power_mean.to(torch.float64)
    mean = statistics.mean.to(torch.float64)
    if not mean.any() and power.any():
        raise ValueError(
            f"{who} needs the pixel mean of the data, but these statistics have none (mean zero everywhere with a "
            "non-zero power spectrum: official PDS .npy statistics, as pds_lightning.convert stores them, hold only "
            f"log1p(mean |fft2 x|^2) and mean x^2), so the mean would count as variance{advice}; or recompute the "
            "statistics from the training data (the data module's statistics, or "
            "ScoreModule.set_statistics(ImageStatistics(shape).update(images)))")
    H, W = power.shape[-2:]
    lam = (power - torch.fft.fft2(mean).abs().square()) / (H * W)
    lam = lam.clamp_min(floor * float(lam.max().clamp_min(1e-300)))
    return 4.0 * lam if centered else lam


def moments_problem(moments: Mapping[str, torch.Tensor]) -> str:
    """'' when the moments can be those of images in [0, 1] (all finite, power_mean >= 0, mean and sq_mean in
    [0, 1]), else what is wrong with the first that cannot. Exact bounds: a float sum of values <= 1 divided by
    their count cannot round above 1."""
    for key in MOMENTS:
        value = moments[key]
        low, high = 0.0, (None if key == "power_mean" else 1.0)
        nonfinite = ~torch.isfinite(value)
        if bool(nonfinite.any()):
            return f"{key!r} holds {_values(int(nonfinite.sum()))} NaN/Inf"
        outside = (value < low) if high is None else (value < low) | (value > high)
        if bool(outside.any()):
            where = ">= 0" if high is None else "in [0, 1]"
            return f"{key!r} holds {_values(int(outside.sum()))} not {where} (e.g. {float(value[outside][0]):.4g})"
    return ""


def _values(n: int) -> str:
    return f"{n} value{'' if n == 1 else 's'}"
