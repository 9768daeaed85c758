"""Training loader pieces: the worker default, and a shuffled order that a resumed fit continues mid-epoch.

Lightning 2.6 restores a fit's batch index on resume, but a plain `DataLoader(shuffle=True)` starts the
epoch over with a fresh permutation (it warns "your dataloader is not resumable"). `EpochSampler` draws the
order from (seed, epoch) alone and can start `start` samples in; `ResumableLoader` exposes that position
through `state_dict` / `load_state_dict`, which Lightning saves in and restores from the checkpoint. With
`draw_seeds`, each index comes with the seed of its augmentation draws, a function of (seed, epoch, index) too, so
the augmentation depends on neither the loader workers nor a resume.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

from torch.utils.data import DataLoader, DistributedSampler

from pds_lightning.data.seeds import derived_seed

MAX_DEFAULT_WORKERS = 8  # beyond this, decode workers rarely pay for their memory on one GPU


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm or container limit), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(cpus: int | None = None) -> int:
    """Loader workers when `num_workers` is None: one CPU left to the training process, at most 8."""
    cpus = available_cpus() if cpus is None else cpus
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


class EpochSampler(DistributedSampler):
    """Shuffled indices, a function of (seed, epoch) only, sharded over ranks; may start `start` samples in.

    A `DistributedSampler` (also on one process) so that Lightning keeps it instead of wrapping it in DDP.
    `set_epoch` to another epoch drops a pending start; to the same epoch it keeps it (Lightning calls it after
    it has restored the position). `draw_seeds`: yield (index, derived_seed(seed, "augment", epoch, index)) pairs,
    the seed of that sample's random augmentation (the sampler runs in the main process, so the pairs carry
    the epoch and a restored seed to the workers' copies of the dataset).
    """

    def __init__(self, dataset, seed: int, num_replicas: int = 1, rank: int = 0, draw_seeds: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start, self.draw_seeds = 0, draw_seeds

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())  # this rank's share of the (seed + epoch) permutation
        start, self.start = self.start, 0
        if self.draw_seeds:  # lazily (one hash per sample as it is loaded), with this epoch's seed and number
            seed, epoch = self.seed, self.epoch
            return ((i, derived_seed(seed, "augment", epoch, i)) for i in indices[start:])
        return iter(indices[start:])


class ResumableLoader(DataLoader):
    """A `DataLoader` over an `EpochSampler` whose state is (seed, epoch, samples consumed on this rank).

    `batches_done` tells how many batches of the current epoch training has consumed (the DataModule reads
    Lightning's batch progress, which excludes batches the loop prefetched); without it the loader counts
    the batches it has yielded.
    """

    def __init__(self, dataset, sampler: EpochSampler, batch_size: int, batches_done: Callable[[], int | None]
                 | None = None, **kwargs):
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.batches_done = batches_done
        self._yielded = 0

    def __iter__(self):
        self._yielded = 0
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        done = self.batches_done() if self.batches_done is not None else None
        done = self._yielded if done is None else done
        return {"seed": self.sampler.seed, "epoch": self.sampler.epoch, "consumed": done * self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        sampler = self.sampler
        sampler.seed, sampler.epoch, sampler.start = state["seed"], state["epoch"], state["consumed"]
        if sampler.start >= sampler.num_samples:  # saved at the end of an epoch: the next one starts afresh
            sampler.epoch, sampler.start = sampler.epoch + 1, 0
