"""Atomic file writes: readers see no file or the whole file, also when a process is killed midway.

A write goes to a hidden temp file beside its target, `.{name}.{pid}@{host}.{token}.tmp`, then is renamed
over it. The writer's pid and host in the name let a later run remove only the temps of dead writers (same
host, pid no longer running) and never a live one of a concurrent process; temps of other hosts are left
alone (their processes cannot be checked from here). Temps are created with mode 0o666 less the umask, as
any new file is (mkstemp's 0o600 would survive the rename), so shared output folders stay readable: every
file the project writes goes through here, so one rule sets every mode. An OSError names the target path,
also when creating the temp fails (a read-only folder). `check_outputs` is the one check that an output
replaces no input and, unless forced, no existing file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

# Temp files are hidden ('.' prefix) and end with this, so a resumed run can recognise and remove them.
TMP_SUFFIX = ".tmp"
# The token has no '.', so it is the last dot-separated part; the host is everything after the last '@'.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+?)\.(?P<token>[0-9a-f]+)"
                        + re.escape(TMP_SUFFIX))


@functools.lru_cache(maxsize=None)
def this_host() -> str:
    """This machine's name as temp names carry it (characters outside [A-Za-z0-9._-] become '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "localhost"


def temp_owner(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that made the temp file `name`; None for any other name."""
    match = _TEMP_NAME.fullmatch(name)
    return (match["host"], int(match["pid"])) if match else None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (signal 0 probes without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def is_stale_temp(name: str) -> bool:
    """A temp file of a dead writer on this host; live writers', other hosts' and unknown names are not stale."""
    owner = temp_owner(name)
    return owner is not None and owner[0] == this_host() and owner[1] > 0 and not pid_alive(owner[1])


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Remove the stale temp files directly in `folder` (a killed writer's); returns how many."""
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and is_stale_temp(entry.name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _new_temp(path: Path) -> Path:
    """Create an empty temp file beside `path`, named after this process, mode 0o666 less the umask; an
    OSError (read-only or full folder) names `path`: the temp's name means nothing to the user."""
    prefix = f".{path.name}.{os.getpid()}@{this_host()}."
    while True:
        tmp = path.parent / f"{prefix}{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
        except OSError as err:
            named = _naming(err, path, tmp)
            if named is err:
                raise
            raise named from err


def _naming(err: OSError, path: Path, tmp: Path) -> OSError:
    """`err` with the target path as its file name when it named none or the temp (e.g. ENOSPC in write)."""
    if err.errno is None or err.filename not in (None, str(tmp)):
        return err
    return OSError(err.errno, err.strerror or str(err), str(path))  # errno keeps the subclass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path beside `path`; on success it replaces `path`, on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        yield str(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        named = _naming(err, path, tmp) if isinstance(err, OSError) else err
        if named is err:
            raise
        raise named from err


def _write_bytes(tmp: str | os.PathLike, data: bytes, fsync: bool) -> None:
    fd = os.open(tmp, os.O_WRONLY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, fsync: bool = False) -> None:
    """Write `data` to `path` atomically; `fsync` also guards against power loss."""
    with atomic_path(path) as tmp:
        _write_bytes(tmp, data, fsync)


def write_atomic_all(files: Mapping[str | os.PathLike, bytes]) -> None:
    """Write several files as one: every temp is written before any is renamed into place, so a failure
    (a full disk) leaves each old file as it was, no new one and no temp; the error names its target."""
    with contextlib.ExitStack() as stack:
        temps = [(Path(path), stack.enter_context(atomic_path(path)), data) for path, data in files.items()]
        for path, tmp, data in temps:
            try:
                _write_bytes(tmp, data, fsync=False)
            except OSError as err:  # named here: an enclosing atomic_path would name its own target
                named = _naming(err, path, Path(tmp))
                if named is err:
                    raise
                raise named from err


def write_new(path: str | os.PathLike, data: bytes, fsync: bool = False) -> bool:
    """Write `data` to `path` atomically unless `path` exists; False (nothing written) if it does.

    Of processes racing to create one path exactly one wins: a hard link never replaces its target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        _write_bytes(tmp, data, fsync)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as err:  # file systems without hard links: create-if-absent, without the race guard
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    except OSError as err:
        named = _naming(err, path, tmp)
        if named is err:
            raise
        raise named from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_outputs(outputs: Sequence[tuple[str, str | os.PathLike]], inputs: Iterable[str | os.PathLike | None] = (),
                  force: bool = False) -> None:
    """Refuse, before any work, to write `outputs` ((what, path) pairs: what names the option, e.g. '--output')
    over an input file or a file in an input folder (also through another path or a link; never, whatever
    `force`), over an existing file unless `force`, over a folder, or twice to one path. FileExistsError: one
    line naming the path and the fix."""
    inputs = [p for p in inputs if p is not None and os.path.exists(p)]
    seen: dict[str, str] = {}
    for what, path in outputs:
        key = os.path.realpath(path)
        if key in seen:
            raise FileExistsError(f"{what} {path} is also {seen[key]}: one file cannot be both; give another "
                                  "output name")
        seen[key] = f"{what} {path}"
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path):
            raise FileExistsError(f"{what} {path} is a folder; give a file path")
        for source in inputs:
            if os.path.isdir(source) and _inside(path, source):
                raise FileExistsError(f"{what} {path} is a file of the input folder {source}; writing it would "
                                      "replace an input: give another output path")
            if os.path.exists(path) and os.path.samefile(path, source):
                raise FileExistsError(f"{what} {path} is the input file {source}; writing it would replace the "
                                      "input: give another output path")
        if not force:
            raise FileExistsError(f"{what} {path} exists; pass --force to replace it or give another output path")


def check_new_folder(path: str | os.PathLike, replace: bool = False, inputs: tuple = ()) -> None:
    """Refuse to write the folder `path` where it exists (unless `replace`), is not a folder, or is or holds one
    of `inputs` (never replaced: replacing would delete what is being read)."""
    path = Path(path)
    target = path.resolve()
    for item in inputs:
        item = Path(item).resolve()
        if item == target or target in item.parents:
            raise ValueError(f"{path} is or holds the input {item}; write to another folder")
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output folder")
    if path.exists() and not replace:
        raise FileExistsError(f"{path} exists; choose a new folder or pass --force to replace it")


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, replace: bool = False, inputs: tuple = ()) -> Iterator[Path]:
    """Yield a new empty folder beside `path` (a hidden temp name); on success it becomes `path`, on any error it
    is removed, so readers never see a half-written folder. `check_new_folder` rules on an existing `path`; one
    that is replaced is moved aside, then removed after the rename. Made with mode 0o777 less the umask."""
    import shutil

    check_new_folder(path, replace, inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}@{this_host()}."
    tmp, old = (path.parent / f"{prefix}{secrets.token_hex(4)}{suffix}" for suffix in (".dir.tmp", ".old.tmp"))
    os.mkdir(tmp)
    try:
        yield tmp
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.rename(old, path)  # put the replaced folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def first_line(err: BaseException) -> str:
    """The first line of an error's message (torch's terminal colour escapes removed), for one-line errors that
    quote a library's reason; the error's type when it has no message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__
