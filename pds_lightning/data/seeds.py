"""Predict seeds: the `seeds` range text ('0-9,20,30-31') and the loader of seed batches."""

from __future__ import annotations

import re

import torch
from torch.utils.data import DataLoader


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


def seed_loader(seeds: list[int], batch_size: int) -> DataLoader:
    """Batches of seeds (long tensors) in the given order: the predict dataloader."""
    return DataLoader(torch.tensor(seeds, dtype=torch.long), batch_size=batch_size, shuffle=False)
