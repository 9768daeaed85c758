"""Predict seeds: the `seeds` range text ('0-9,20,30-31') and the loader of seed batches."""

from __future__ import annotations

import re

import torch
from torch.utils.data import DataLoader, TensorDataset


def parse_seed_range(spec: str, what: str = "seed", unique: bool = True) -> list[int]:
    """'0-9,20,30-31' -> [0, ..., 9, 20, 30, 31]: comma-separated non-negative integers or a-b ranges (inclusive).
    `what` names the list in errors; `unique` refuses repeats (seeds must be; a class list may repeat)."""
    text = str(spec).strip()
    if not text:
        raise ValueError(f"empty {what} range; give e.g. '0-63' or '0-9,20'")
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if match is None:
            raise ValueError(
                f"malformed {what} range part {part!r} in {spec!r}: use non-negative integers 'a' or 'a-b', "
                "separated by commas, e.g. '0-9,20,30-31'"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"reversed {what} range {part!r} in {spec!r}: write it as '{last}-{first}'")
        seeds.extend(range(first, last + 1))
    duplicates = len(seeds) - len(set(seeds))
    if duplicates and unique:
        raise ValueError(f"seed range {spec!r} lists {duplicates} seed(s) more than once")
    return seeds


def classes_for_seeds(seeds: list[int], classes: list[int]) -> dict[int, int]:
    """The class of each seed: `classes` cycled over the seeds in their listed order (seed i of the list gets
    classes[i % len(classes)]), fixed by the full list so a resumed run that skips seeds keeps the pairs."""
    return {seed: classes[i % len(classes)] for i, seed in enumerate(seeds)}


def seed_loader(seeds: list[int], batch_size: int, classes: list[int] | None = None) -> DataLoader:
    """Batches of seeds (long tensors) in the given order: the predict dataloader; with `classes` (one per
    seed) batches are [seeds, classes] pairs."""
    data = torch.tensor(seeds, dtype=torch.long)
    if classes is not None:
        data = TensorDataset(data, torch.tensor(classes, dtype=torch.long))
    return DataLoader(data, batch_size=batch_size, shuffle=False)
