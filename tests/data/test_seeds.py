"""`pds_lightning.data.seeds.parse_seed_range`: ranges, lists and the errors for malformed ones."""

import pytest

from pds_lightning.data import parse_seed_range


def test_parse_seed_range():
    assert parse_seed_range("0-9,20,30-31") == list(range(10)) + [20, 30, 31]
    assert parse_seed_range(" 5 ") == [5]
    assert parse_seed_range("3-3, 7") == [3, 7]
    for bad, message in [("", "empty"), ("1-", "malformed"), ("-3", "malformed"), ("a", "malformed"),
                         ("1,,2", "malformed"), ("5-2", "reversed"), ("1-3,2", "more than once")]:
        with pytest.raises(ValueError, match=message):
            parse_seed_range(bad)
