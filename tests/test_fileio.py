"""`pds_lightning.fileio`: atomic writes keep the old file and leave no temporary file when the disk fills."""

import errno
import os

import pytest

from pds_lightning.fileio import write_atomic
from helpers import disk_full_on_write


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    write_atomic(path, b"old")
    monkeypatch.setattr(os, "write", disk_full_on_write(1, starting_with=b""))
    with pytest.raises(OSError) as info:
        write_atomic(path, b"new content")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]
