"""Compare a checkpoint's state dict with a model's before loading it, naming every difference; refuse
non-finite weights."""

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


def check_finite_weights(state_dict: dict[str, torch.Tensor], where: str) -> None:
    """ValueError naming the first floating tensor of `state_dict` that holds NaN / Inf, and how many values:
    such weights make every score, hence every sample and every further update, NaN; `where` names the file."""
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if not bad:
        return
    first = state_dict[bad[0]]
    counts = [(int(first.isnan().sum()), "NaN"), (int(first.isinf().sum()), "Inf")]
    held = " and ".join(f"{n} {kind} value{'' if n == 1 else 's'}" for n, kind in counts if n)
    more = f" ({len(bad) - 1} more tensors hold NaN/Inf too)" if len(bad) > 1 else ""
    raise ValueError(f"{where}: parameter {bad[0]} holds {held}{more}; a model with non-finite weights samples and "
                     "trains only NaN: use an earlier checkpoint (one saved before the loss became non-finite)")


__all__ = ["check_finite_weights", "state_dict_mismatch"]
