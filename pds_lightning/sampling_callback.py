"""Samples during training: `SamplingCallback`.

At the end of validation it samples a fixed set of seeds (EMA weights, every rank its share) with each
sampler, logs one image grid per sampler and the sample metrics.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from pds_lightning.images import to_unit_range
from pds_lightning.metrics import (FIDStatistics, FeatureMetrics, fid_sample_warning, make_feature_extractor,
                                   metric_name, spectral_error)
from pds_lightning.sampling import Sampler


class SamplingCallback(Callback):
    """Sample fixed seeds with each sampler (a component; its name tags the logs) at the end of validation and log grids and metrics.

    Seed k of `seed_offset + range(num_samples)` goes to rank k % world_size, so each sample is drawn once
    whatever the world size; images are gathered (padded to equal length, padding dropped) for the grids
    and the spectral error. FID / KID (with a feature extractor or Inception weights) sum each rank's
    features. `fid_reference_stats` (an EDM / ADM `.npz`, 'mu' and 'sigma') replaces the validation images as
    the FID reference (no KID then); with it or `fid=True` and no extractor configured, the standard
    Inception is used (an error names what to install when its weights are unavailable). Logged:
    `val/spectral_error/<name>`, `val/fid@<n>/<name>`, `val/kid@<n>/<name>` (n: the sample count; a warning
    below 10k), `val/nfe/<name>`, `val/sample_time_s/<name>` and images `samples/<name>` (+ `samples/side_by_side`).
    A class-conditional model (`num_classes`) samples one class per grid row: seed offset + k gets class
    (k // grid_nrow) % num_classes, guided by each sampler's guidance_scale (num_samples = grid_nrow x classes
    shows every class once).
    """

    def __init__(self, samplers: Sequence[Sampler], num_samples: int = 64, seed_offset: int = 0,
                 every_n_epochs: int = 1, grid_nrow: int = 8, fid_feature_extractor: nn.Module | None = None,
                 inception_weights: str | None = None, num_reference: int | None = None,
                 fid_reference_stats: str | None = None, fid: bool = False):
        if not samplers:
            raise ValueError("SamplingCallback needs at least one sampler")
        samplers = [Sampler.from_config(s, what="SamplingCallback.samplers") for s in samplers]
        for sampler in samplers:
            sampler.check_task(None)  # validation samples fill in no task
        names = [s.name for s in samplers]
        if len(set(names)) != len(names):
            raise ValueError(f"sampler names must be unique (they name the logged metrics), got {names}")
        if num_samples < 1 or seed_offset < 0 or every_n_epochs < 1 or grid_nrow < 1:
            raise ValueError("num_samples, every_n_epochs and grid_nrow must be >= 1 and seed_offset >= 0, got "
                             f"{num_samples}, {every_n_epochs}, {grid_nrow}, {seed_offset}")
        self.samplers = samplers
        self.num_samples = num_samples
        self.seed_offset = seed_offset
        self.every_n_epochs = every_n_epochs
        self.grid_nrow = grid_nrow
        self.num_reference = num_reference
        self.fid_reference = FIDStatistics.load(fid_reference_stats) if fid_reference_stats else None
        standard = "required" if fid or self.fid_reference is not None else "never"
        self.features = make_feature_extractor(fid_feature_extractor, inception_weights, standard)
        if self.features is not None and num_samples < 2:
            raise ValueError("FID needs num_samples >= 2")
        if self.features is not None and fid_sample_warning(num_samples):
            rank_zero_warn(f"SamplingCallback: {fid_sample_warning(num_samples)} (logged as val/fid@<n>/...)")
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
        for sampler in self.samplers:
            images, nfe, seconds = self._sample(pl_module, sampler, mine)
            nfe = int(trainer.strategy.reduce(torch.tensor(float(nfe), device=device), reduce_op="max"))
            seconds = float(trainer.strategy.reduce(torch.tensor(seconds, device=device), reduce_op="max"))
            everyone = self._gather(pl_module, images, mine, per_rank, world)
            values = {f"val/nfe/{sampler.name}": float(nfe), f"val/sample_time_s/{sampler.name}": seconds}
            if stats is not None:
                values[f"val/spectral_error/{sampler.name}"] = spectral_error(everyone, stats.power_mean)
            if self._feature_metrics is not None:
                fm = self._feature_metrics
                fm.update(images, real=False)
                scores = fm.compute()
                fm.reset()
                for kind, v in scores.items():
                    values[metric_name(kind, self.num_samples, sampler.name)] = v
            for key, v in values.items():
                # Identical on every rank already; the mean over ranks keeps it and lets every rank see it.
                pl_module.log(key, v, on_epoch=True, sync_dist=True)
            grids.append((sampler.name, self._grid(everyone)))
        if trainer.is_global_zero:
            self._log_images(trainer, grids)

    # -- pieces -----------------------------------------------------------------------------------------------
    def _sample(self, pl_module, sampler, seeds: torch.Tensor) -> tuple[torch.Tensor, int, float]:
        """This rank's images `[n, C, H, W]` in [0, 1], the NFE and the seconds taken."""
        if seeds.numel() == 0:  # more ranks than seeds
            return torch.zeros(0, *pl_module.image_shape, device=pl_module.device), 0, 0.0
        sync = torch.cuda.synchronize if pl_module.device.type == "cuda" else (lambda *a: None)
        sync()
        t0 = time.perf_counter()
        classes = self.classes_for(pl_module, seeds)
        result = pl_module.sample(sampler, seeds) if classes is None else pl_module.sample(sampler, seeds, classes)
        sync()
        return result.x.float(), int(result.nfe), time.perf_counter() - t0

    def classes_for(self, pl_module, seeds: torch.Tensor) -> torch.Tensor | None:
        """One class per grid row for a class-conditional model, else None."""
        num_classes = getattr(pl_module, "num_classes", None)
        if not num_classes:
            return None
        return ((seeds - self.seed_offset) // self.grid_nrow) % num_classes

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
        """One grid per sampler and, for several samplers, all grids side by side (same seed, same place)."""
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
        """Features of the reference images, once: image k of the validation set goes to rank k % world
        (or the precomputed statistics, held by rank 0)."""
        device = pl_module.device
        if self._feature_metrics is None:
            self._feature_metrics = FeatureMetrics(self.features, pl_module.image_shape,
                                                   kid_subset_size=min(1000, self.num_samples),
                                                   kid=self.fid_reference is None)
        fm = self._feature_metrics.to(device)
        if self._reference_done:
            return
        if self.fid_reference is not None:
            fm.set_reference_statistics(self.fid_reference, rank=trainer.global_rank)
            self._reference_done = True
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
