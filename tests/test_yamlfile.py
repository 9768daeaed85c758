"""`pds_lightning.yamlfile`: config files as untrusted YAML (the alias bound, plain data only)."""

import pytest
import yaml
from helpers import flow_bomb

from pds_lightning.yamlfile import ConfigFileError, MAX_EXPANDED_NODES, check_value, expanded_size, load_file


def test_expanded_size_counts_every_alias_expansion():
    # root mapping 1 + key a 1 + [1, 1] 3 + key b 1 + [*a, *a] (1 + 3 + 3) = 13
    assert expanded_size(yaml.compose("a: &a [1, 1]\nb: &b [*a, *a]\n")) == 13
    assert expanded_size(yaml.compose("a: [1, 1]\nb: [[1, 1], [1, 1]]\n")) == 13  # the same data written out
    levels = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    bomb = yaml.compose("l0: &l0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n" + levels)
    assert expanded_size(bomb) == MAX_EXPANDED_NODES + 1  # counted only up to just past the limit
    with pytest.raises(ValueError, match="recursive"):
        expanded_size(yaml.compose("a: &a [1, *a]\n"))


def test_load_file_returns_plain_data_and_refuses_tags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  steps: &n 3\n  again: *n\n  names: [a, b]\n")
    assert load_file(path) == {"model": {"steps": 3, "again": 3, "names": ["a", "b"]}}
    path.write_text("x: !!python/name:os.system\n")
    with pytest.raises(ConfigFileError, match=r"tag that is not plain data: .*python/name:os\.system.*line 1"):
        load_file(path)


def test_a_string_value_counts_as_the_yaml_it_holds():
    """Issue 31 item 8: jsonargparse parses a string value again (`model: '{a: &a [...], ...}'`)."""
    # root 1 + key s 1 + the string's YAML 13 (as in the first test) = 15
    assert expanded_size(yaml.compose("s: '{a: &a [1, 1], b: &b [*a, *a]}'\n")) == 15
    assert expanded_size(yaml.compose("s: '[1, 1]'\n")) == 3  # no alias: one string value
    assert expanded_size(yaml.compose("s: '*.png'\n")) == 3  # not YAML (an undefined alias): one string value
    assert expanded_size(yaml.compose(f"s: '{flow_bomb(10)}'\n")) == MAX_EXPANDED_NODES + 1
    inner = flow_bomb(10).replace("'", "''")
    nested = f"s: \"t: '{inner}'\"\n"  # a string holding a string holding the bomb
    assert expanded_size(yaml.compose(nested)) == MAX_EXPANDED_NODES + 1


def test_check_value_refuses_only_a_bomb(tmp_path):
    with pytest.raises(ConfigFileError, match=r"^config value x is refused: its aliases \(\*name\) expand to more "
                                              r"than 100,000 values \(an alias bomb\?\)"):
        check_value(flow_bomb(10), "value x")
    for text in ("a: b: c", "*.png", "[1, *x]", "{a: &a [1], b: *a}", "plain"):
        check_value(text, "value x")  # not YAML, or small: the parser decides
    path = tmp_path / "quoted.yaml"
    path.write_text(f"model: '{flow_bomb(10)}'\n")
    with pytest.raises(ConfigFileError, match=f"config {path} is refused: its aliases"):
        load_file(path)
