"""`pds_lightning.yamlfile`: config files as untrusted YAML (the alias bound, plain data only)."""

import pytest
import yaml

from pds_lightning.yamlfile import ConfigFileError, MAX_EXPANDED_NODES, expanded_size, load_file


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
