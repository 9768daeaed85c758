"""Sources of standard-normal draws for samplers (`noise(like) -> z`); PDS applies M to them, not these.

A sample must depend only on its seed and the settings, not on batch size, position or process count:
`SeededNoise` keeps one generator per seed and draws row b from seed b's generator only.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor


class SeededNoise:
    """One `torch.Generator` per seed; `noise(like)[b]` comes from seed b's generator only."""

    def __init__(self, seeds: Iterable[int] | Tensor, device: torch.device | str | None = None):
        if isinstance(seeds, Tensor):
            device = seeds.device if device is None else device
            seeds = seeds.flatten().tolist()
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("SeededNoise needs at least one seed")
        self.device = torch.device("cpu" if device is None else device)
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def noise(self, like: Tensor) -> Tensor:
        if like.shape[0] != len(self.seeds):
            raise ValueError(f"asked for a batch of {like.shape[0]} draws but SeededNoise holds "
                             f"{len(self.seeds)} seeds; the batch size must equal the number of seeds")
        return torch.stack([torch.randn(like.shape[1:], generator=g, device=self.device, dtype=like.dtype)
                            for g in self.generators])


class RecordedNoise:
    """Replays a recorded stream: the k-th call returns `stream[k]` (parity with a reference run)."""

    def __init__(self, stream: Sequence[Tensor] | Tensor):
        self.stream = stream
        self.calls = 0
        self.device = stream[0].device

    def noise(self, like: Tensor) -> Tensor:
        if self.calls >= len(self.stream):
            raise IndexError(f"recorded noise stream exhausted after {len(self.stream)} draws; the sampler "
                             "draws more often than the recorded run (different settings?)")
        z = self.stream[self.calls]
        if tuple(z.shape) != tuple(like.shape):
            raise ValueError(f"recorded draw {self.calls} has shape {tuple(z.shape)}, expected {tuple(like.shape)}")
        self.calls += 1
        return z.to(device=like.device, dtype=like.dtype)

