"""`pds_lightning.fileio`: atomic writes keep the old file and leave no temporary file when the disk fills,
name the path in their errors, respect the umask, and clean up only the temps of dead writers."""

import errno
import os

import numpy as np
import pytest
import torch

from pds_lightning.fileio import (atomic_path, is_stale_temp, remove_stale_temps, temp_owner, this_host,
                                  write_atomic, write_new)
from helpers import dead_pid, disk_full_on_write


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    write_atomic(path, b"old")
    monkeypatch.setattr(os, "write", disk_full_on_write(1, starting_with=b""))
    with pytest.raises(OSError) as info:
        write_atomic(path, b"new content")
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(path)  # the target, not the hidden temp nor nothing
    assert str(path) in str(info.value)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=lambda u: f"umask{u:03o}")
def test_written_files_get_the_mode_the_umask_allows(tmp_path, umask):
    """PNGs and manifests (write_atomic), checkpoints and caches (atomic_path + torch.save / np.save), and
    created-once files (write_new) all end up 0o666 & ~umask, as a plain open() would make them."""
    old = os.umask(umask)
    try:
        write_atomic(tmp_path / "a.png", b"png")
        with atomic_path(tmp_path / "b.ckpt") as tmp:
            torch.save({"w": torch.ones(2)}, tmp)
        with atomic_path(tmp_path / "c.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.zeros(3))
        assert write_new(tmp_path / "d.json", b"{}")
        with open(tmp_path / "reference", "w"):
            pass
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in ("a.png", "b.ckpt", "c.npy", "d.json")}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
    assert os.stat(tmp_path / "reference").st_mode & 0o777 == 0o666 & ~umask


def test_write_new_creates_once_and_leaves_no_temp(tmp_path):
    path = tmp_path / "manifest.json"
    assert write_new(path, b"first")
    assert not write_new(path, b"second")
    assert path.read_bytes() == b"first" and os.listdir(tmp_path) == ["manifest.json"]


def test_temp_names_carry_pid_and_host_and_only_dead_writers_temps_are_stale(tmp_path):
    with atomic_path(tmp_path / "000001.png") as tmp:
        name = os.path.basename(tmp)
        assert temp_owner(name) == (this_host(), os.getpid())
        assert not is_stale_temp(name)  # this process is alive and writing it
    dead = dead_pid()
    names = {
        "dead": f".000002.png.{dead}@{this_host()}.0123abcd.tmp",
        "alive": f".000003.png.{os.getpid()}@{this_host()}.0123abcd.tmp",
        "other host": f".000004.png.{dead}@{this_host()}x.cluster.0123abcd.tmp",
        "unknown": ".000005.png.k2j_x9.tmp",  # mkstemp's names: no writer to check
    }
    assert temp_owner(names["other host"]) == (this_host() + "x.cluster", dead)
    for name in names.values():
        (tmp_path / name).write_bytes(b"partial")
    assert remove_stale_temps(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(["000001.png"] + [names[k] for k in ("alive", "other host",
                                                                                      "unknown")])
