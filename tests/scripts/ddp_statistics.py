"""Estimate ImageDataModule statistics in 2 gloo processes; each rank saves the statistics it ends with.

    python tests/scripts/ddp_statistics.py DATA.npz OUT_DIR NUM_IMAGES CACHE_DIR

Each rank writes OUT_DIR/rank{r}.pt (estimated, no cache) and OUT_DIR/cached_rank{r}.pt (with CACHE_DIR).

Run as a subprocess by tests/test_statistics.py: the process group lives and dies here, and the
rendezvous uses a tcp:// init_method, so no MASTER_ADDR / MASTER_PORT variables are set anywhere.
"""

import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pds_lightning.data import ImageDataModule, Images, Split, Stats

from helpers import free_port

WORLD_SIZE = 2


def worker(rank: int, port: int, data: str, out_dir: str, num_images: int, cache_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        for prefix, cache in (("", ""), ("cached_", cache_dir)):
            dm = ImageDataModule(source=data, images=Images(size=8), split=Split(val_size=2),
                                 stats=Stats(num_images=num_images, cache_dir=cache), batch_size=3)
            dm.setup("fit")
            torch.save(dm.statistics.state_dict(), f"{out_dir}/{prefix}rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    data, out_dir, num_images = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cache_dir = sys.argv[4]
    mp.spawn(worker, args=(free_port(), data, out_dir, num_images, cache_dir), nprocs=WORLD_SIZE)
