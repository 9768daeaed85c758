"""Compare a checkpoint's state dict with a model's before loading it, naming every difference."""

from __future__ import annotations

import torch


def state_dict_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], show: int = 3,
                        against: str = "model") -> str:
    """'' when the keys and shapes of `got` (the checkpoint) agree with `expected`, else a short list of
    missing, unexpected and mis-shaped keys (at most `show` of each); `against` names `expected` in it."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    reshaped = [f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                if k in got and tuple(got[k].shape) != tuple(v.shape)]
    parts = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        (f"shape mismatches (mis-shaped keys, checkpoint vs {against})", reshaped)):
        if keys:
            more = f" and {len(keys) - show} more" if len(keys) > show else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:show])}{more}")
    return "; ".join(parts)


__all__ = ["state_dict_mismatch"]
