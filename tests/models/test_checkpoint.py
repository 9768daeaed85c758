"""`state_dict_mismatch`: empty when names and shapes agree, else every kind of difference by name."""

import torch

from pds_lightning.models.checkpoint import state_dict_mismatch


def test_agreeing_state_dicts_give_no_problem():
    model = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    assert state_dict_mismatch(model, {k: torch.ones_like(v) for k, v in model.items()}) == ""


def test_each_difference_is_named_with_at_most_show_keys():
    model = {f"w{i}": torch.zeros(2) for i in range(5)} | {"s": torch.zeros(2, 2)}
    ckpt = {"s": torch.zeros(3, 2), "extra": torch.zeros(1)}
    problem = state_dict_mismatch(model, ckpt, show=3, against="config")
    assert problem == ("5 missing keys: w0, w1, w2 and 2 more; 1 unexpected keys: extra; "
                       "1 shape mismatches (mis-shaped keys, checkpoint vs config): s (3, 2) vs (2, 2)")
