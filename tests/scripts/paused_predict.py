"""`pds-lightning predict` caught in the middle of its first PNG write: a live writer for concurrency tests.

    python tests/scripts/paused_predict.py WORKDIR PREDICT_ARGS...

When the first PNG's temp file is complete and about to be renamed into place, the process writes the temp's
path to WORKDIR/paused and waits (up to 300 s) for WORKDIR/go, then renames it and carries on.
"""

import os
import sys
import time
from pathlib import Path

from pds_lightning.cli import main

WORK = Path(sys.argv[1])
real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(".png") and not (WORK / "paused").exists():
        (WORK / "paused").write_text(str(src))
        deadline = time.monotonic() + 300
        while not (WORK / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace
main(sys.argv[2:])
