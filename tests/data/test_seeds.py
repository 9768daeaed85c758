"""`pds_lightning.data.seeds`: ranges, lists and the errors for malformed ones, for the CLI (`parse_seed_range`)
and the Python API (`seed_values`, through `ScoreModule.generate_images`); `derived_seed`."""

import hashlib
import re
from pathlib import Path

import pytest
import torch

from pds_lightning.data import parse_seed_range
from pds_lightning.data.seeds import MAX_SEED, derived_seed

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def test_derived_seed_is_the_hash_of_its_parts():
    expected = int.from_bytes(hashlib.blake2b(b"7/augment/2/11", digest_size=8).digest(), "little") & MAX_SEED
    assert derived_seed(7, "augment", 2, 11) == derived_seed(7, "augment", torch.tensor(2), 11) == expected
    # Unlike seed + epoch, neighbouring parts do not share a stream.
    assert derived_seed(1, "augment", 0, 11) != derived_seed(0, "augment", 1, 11)


def test_parse_seed_range():
    assert parse_seed_range("0-9,20,30-31") == list(range(10)) + [20, 30, 31]
    assert parse_seed_range(" 5 ") == [5]
    assert parse_seed_range("3-3, 7") == [3, 7]
    for bad, message in [("", "empty"), ("1-", "malformed"), ("-3", "malformed"), ("a", "malformed"),
                         ("1,,2", "malformed"), ("5-2", "reversed"), ("1-3,2", "more than once")]:
        with pytest.raises(ValueError, match=message):
            parse_seed_range(bad)


def test_range_limits_are_checked_before_the_list_is_built():
    from pds_lightning.data.seeds import MAX_SEED, MAX_SEEDS

    assert MAX_SEED == 2**63 - 1 == torch.iinfo(torch.long).max  # seeds are carried as int64 tensors
    assert parse_seed_range(f"{MAX_SEED - 1}-{MAX_SEED}") == [MAX_SEED - 1, MAX_SEED]
    assert len(parse_seed_range(f"0-{MAX_SEEDS - 1}")) == MAX_SEEDS
    with pytest.raises(ValueError, match=r"lists 1,000,001 values, more than the 1,000,000 one run takes"):
        parse_seed_range(f"0-{MAX_SEEDS}")
    with pytest.raises(ValueError, match=r"class 9223372036854775808 in .* is out of range"):
        parse_seed_range(f"0,{MAX_SEED + 1}", what="class", unique=False)


@pytest.mark.parametrize("seeds, message", [
    ("0-100000000000", "seed range '0-100000000000' lists 100,000,000,001 values, more than the 1,000,000 one "
                       "run takes; split it over several runs"),
    (str(2**64), "seed 18446744073709551616 in '18446744073709551616' is out of range: seeds lie in "
                 "[0, 2**63 - 1 = 9223372036854775807] (torch generator seeds, carried as int64)"),
])
def test_predict_refuses_a_huge_range_or_seed_in_one_line(tmp_path, capsys, monkeypatch, seeds, message):
    from pds_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(TINY), "--data.predict.seeds", seeds])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1, err
    assert message in err
    assert not any(tmp_path.iterdir())  # refused before anything ran


# ---- issue 31 item 9: the Python API (ScoreModule.generate_images) follows the same rules -------------------------
RULE = "[0, 2**63 - 1 = 9223372036854775807] (torch generator seeds, carried as int64)"
CALLS = "split it over several calls (e.g. range(0, 1000000), then range(1000000, 2000000))"


@pytest.mark.parametrize("seeds, message", [
    ([1.9], f"seed 1.9 (item 0) is not an integer: seeds are integers in {RULE}"),
    ([0, True], f"seed True (item 1) is not an integer: seeds are integers in {RULE}"),
    (True, f"seeds wants an int n (seeds 0..n-1), a range or a 1-d sequence of integers in {RULE}, got True"),
    (torch.tensor([1.9]), f"seeds holds torch.float32 values; seeds are integers in {RULE}"),
    ([-1], f"seed -1 (item 0) is out of range: seeds lie in {RULE}"),
    ([3, 2**64], f"seed 18446744073709551616 (item 1) is out of range: seeds lie in {RULE}"),
    ([2**63], f"seed 9223372036854775808 (item 0) is out of range: seeds lie in {RULE}"),
    (range(10**15), f"seeds lists 1,000,000,000,000,000 values, more than the 1,000,000 one run takes; {CALLS}"),
    (10**15, f"seeds=1000000000000000 lists 1,000,000,000,000,000 values, more than the 1,000,000 one run takes; "
             f"{CALLS}"),
    (range(2**70), f"seeds lists more than 2**63 values, more than the 1,000,000 one run takes; {CALLS}"),
    (iter(range(10**12)), f"seeds lists more than 1,000,000 values, more than the 1,000,000 one run takes; {CALLS}"),
    ([], "seeds is empty; give e.g. 16 or range(16)"),
], ids=["float", "bool", "bool count", "float tensor", "negative", "2**64", "2**63", "range 10**15", "count 10**15",
        "range 2**70", "iterator", "empty"])
def test_generate_images_refuses_what_predict_refuses(seeds, message):
    from helpers import tiny_module

    model = tiny_module()
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        model.generate_images(seeds)


def test_the_largest_seed_samples_and_is_named_by_the_rule_the_cli_states(tmp_path, capsys, monkeypatch):
    from helpers import tiny_module
    from pds_lightning.cli import main
    from pds_lightning.data.seeds import MAX_SEED
    from pds_lightning.sampling import PC

    model = tiny_module()
    one_step = PC(steps=1)
    images = model.generate_images([MAX_SEED, 0], sampler=one_step)
    assert images.shape == (2, 1, 8, 8)
    torch.testing.assert_close(images[1:], model.generate_images([0], sampler=one_step), rtol=0, atol=1e-5)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(TINY), "--data.predict.seeds", str(MAX_SEED + 1)])
    assert f"is out of range: seeds lie in {RULE}" in capsys.readouterr().err  # the API's words above
