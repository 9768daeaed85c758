"""`pds-lightning configs`: the shipped configs listed and written out; `--config NAME` for a shipped name."""

import os
from pathlib import Path

import pytest

from pds_lightning.cli import with_shipped_configs
from pds_lightning.configs import main, write_config
from pds_lightning.resources import config_path, shipped_configs
from helpers import read_only_on_create

ROOT = Path(__file__).resolve().parents[1]


def test_the_listing_is_every_yaml_under_configs(capsys):
    expected = sorted(p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert shipped_configs() == expected and "demo" in expected
    assert main([]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == expected
    assert lines[expected.index("demo")].split(None, 1)[1].startswith("Demo: a ~320k-parameter NCSN++")


def test_write_copies_the_file_and_keeps_an_existing_one(tmp_path, capsys):
    path = write_config("score_sde/ve_cifar10_ncsnpp_continuous", tmp_path)
    assert path == tmp_path / "ve_cifar10_ncsnpp_continuous.yaml"
    assert path.read_bytes() == (ROOT / "configs" / "score_sde" / "ve_cifar10_ncsnpp_continuous.yaml").read_bytes()
    path.write_text("mine")
    with pytest.raises(FileExistsError, match="exists; pass --force"):
        write_config("score_sde/ve_cifar10_ncsnpp_continuous", path)
    assert path.read_text() == "mine"
    write_config("demo", path, force=True)
    assert path.read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    with pytest.raises(SystemExit) as exit_info:
        main(["write", "no_such_config", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "error: no shipped config named 'no_such_config'" in capsys.readouterr().err


def test_config_names_become_paths_only_where_no_such_file_exists(tmp_path, monkeypatch):
    demo = str(config_path("demo"))
    assert with_shipped_configs(["fit", "--config", "demo", "--trainer.max_steps", "2"]) == [
        "fit", "--config", demo, "--trainer.max_steps", "2"]
    assert with_shipped_configs(["fit", "-c=demo.yaml"]) == ["fit", f"-c={demo}"]
    assert with_shipped_configs(["fit", "--config", "nope"]) == ["fit", "--config", "nope"]  # LightningCLI reports it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").write_text("trainer: {}\n")
    assert with_shipped_configs(["fit", "--config", "demo"]) == ["fit", "--config", "demo"]  # the user's file wins


@pytest.mark.parametrize("umask", [0o077, 0o022], ids=lambda u: f"umask{u:03o}")
def test_written_config_gets_the_mode_the_umask_allows(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert main(["write", "demo", str(tmp_path / "demo.yaml")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "demo.yaml").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_read_only_folder_is_reported_for_the_file_not_its_temp(tmp_path, capsys, monkeypatch):
    dest = tmp_path / "demo.yaml"
    monkeypatch.setattr(os, "open", read_only_on_create())
    with pytest.raises(SystemExit) as exit_info:
        main(["write", "demo", str(dest)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: [Errno 30] Read-only file system: '{dest}'\n"
    assert list(tmp_path.iterdir()) == []
