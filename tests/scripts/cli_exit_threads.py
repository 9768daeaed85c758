"""`pds-lightning ARGS` that, at interpreter exit, prints the native threads still alive on each rank.

    python tests/scripts/cli_exit_threads.py predict ...

One stderr line per rank: `exit-threads rank=R pg_alive=B threads=NAME,NAME,...`. Lightning's launcher
starts the other ranks with this same script, so every rank reports. Linux only (/proc/self/task).
"""

import atexit
import os
import sys


def report() -> None:
    import torch.distributed as dist

    names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    alive = dist.is_available() and dist.is_initialized()
    rank = os.environ.get("NODE_RANK", "0") + "." + os.environ.get("LOCAL_RANK", "0")
    print(f"exit-threads rank={rank} pg_alive={alive} threads={','.join(names)}", file=sys.stderr, flush=True)


atexit.register(report)  # registered first, so it runs last: after Lightning's own exit handlers

from pds_lightning.cli import main  # noqa: E402

main()
