"""`pds_lightning.data.seeds.parse_seed_range`: ranges, lists and the errors for malformed ones; `derived_seed`."""

import hashlib
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
        main(["predict", "--config", str(TINY), "--data.seeds", seeds])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1, err
    assert message in err
    assert not any(tmp_path.iterdir())  # refused before anything ran
