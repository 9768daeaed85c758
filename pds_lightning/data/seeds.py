"""Seeds: predict seeds (the `seeds` range text '0-9,20,30-31' and the loader of seed batches), and the seeds
training's random draws derive from counters (`derived_seed`)."""

from __future__ import annotations

import hashlib
import re

import torch
from torch.utils.data import DataLoader, TensorDataset

#: Largest value: seeds travel as int64 tensors into torch.Generator.manual_seed (which takes up to 2**64 - 1).
MAX_SEED = 2**63 - 1
#: Most values one range may list (a list this long takes ~40 MB); larger ones are split over runs.
MAX_SEEDS = 1_000_000


def derived_seed(*parts: int | str) -> int:
    """A generator seed in [0, MAX_SEED] that is a fixed function of `parts`, e.g. (seed, "augment", epoch, index):
    a hash, so that nearby parts give unrelated streams (with seed + epoch, seed 1 epoch 0 would repeat seed 0
    epoch 1). Training draws from such seeds so that a resumed fit redraws what the uninterrupted fit drew."""
    text = "/".join(part if isinstance(part, str) else str(int(part)) for part in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & MAX_SEED


def parse_seed_range(spec: str, what: str = "seed", unique: bool = True) -> list[int]:
    """'0-9,20,30-31' -> [0, ..., 9, 20, 30, 31]: comma-separated non-negative integers or a-b ranges (inclusive).
    `what` names the list in errors; `unique` refuses repeats (seeds must be; a class list may repeat).
    Values lie in [0, MAX_SEED] and at most MAX_SEEDS are listed (checked before the list is built)."""
    text = str(spec).strip()
    if not text:
        raise ValueError(f"empty {what} range; give e.g. '0-63' or '0-9,20'")
    parts = [_bounds(part.strip(), spec, what) for part in text.split(",")]
    total = sum(last - first + 1 for first, last in parts)
    if total > MAX_SEEDS:
        raise ValueError(f"{what} range {spec!r} lists {total:,} values, more than the {MAX_SEEDS:,} one run takes; "
                         f"split it over several runs (e.g. '0-{MAX_SEEDS - 1}', then '{MAX_SEEDS}-{2 * MAX_SEEDS - 1}')")
    seeds: list[int] = []
    for first, last in parts:
        seeds.extend(range(first, last + 1))
    duplicates = len(seeds) - len(set(seeds))
    if duplicates and unique:
        raise ValueError(f"seed range {spec!r} lists {duplicates} seed(s) more than once")
    return seeds


def _bounds(part: str, spec: str, what: str) -> tuple[int, int]:
    """(first, last) of one part 'a' or 'a-b' of a range text, within [0, MAX_SEED]."""
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
    if last > MAX_SEED:
        raise ValueError(f"{what} {last} in {spec!r} is out of range: {what}s lie in [0, 2**63 - 1 = {MAX_SEED}] "
                         "(torch generator seeds, carried as int64)")
    return first, last


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
