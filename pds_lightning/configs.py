"""`pds-lightning configs`: list the shipped configs, or write one out to edit and run.

  pds-lightning configs                      names and first comment line of every shipped config
  pds-lightning configs write NAME [DEST]    copy it to DEST (default ./<basename>.yaml), atomically
The `--config` of fit / validate / test / predict also accepts a shipped NAME where no such file exists.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from pds_lightning.fileio import check_outputs, write_atomic
from pds_lightning.resources import config_path, shipped_configs


def summary(path: Path) -> str:
    """The config's first comment line (what it is), without the '#'."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def write_config(name: str, dest: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write the shipped config `name` to `dest` (a file, or a folder to put <basename>.yaml in); returns the path.
    An existing file is kept unless `force` (FileExistsError names it)."""
    source = config_path(name)
    dest = Path(dest) if dest is not None else Path(source.name)
    if dest.is_dir():
        dest = dest / source.name
    check_outputs([("DEST", dest)], [source], force)
    write_atomic(dest, source.read_bytes())  # mode 0o666 less the umask, as every file written (fileio)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning configs", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1],
                                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command")
    write = commands.add_parser("write", help="write a shipped config to a file", allow_abbrev=False)
    write.add_argument("name", help="a name that `pds-lightning configs` lists, e.g. demo")
    write.add_argument("dest", nargs="?", default=None, help="file or folder (default: ./<basename>.yaml)")
    write.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    args = parser.parse_args(argv)
    if args.command is None:
        names = shipped_configs()
        width = max(map(len, names))
        for name in names:
            print(f"{name:<{width}}  {summary(config_path(name))}")
        return 0
    try:
        path = write_config(args.name, args.dest, args.force)
    except (ValueError, OSError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"wrote {path}")
    return 0


__all__ = ["main", "summary", "write_config"]
