"""Images/s of the training loader for a folder of JPEGs, against the images/s of a training step.

Run: ``python -m benchmarks.input_pipeline [--num-images 2000] [--sizes 32 64 256] [--batches 20]
[--device cpu] [--output benchmarks/results/input_pipeline.md]``

Writes `--num-images` synthetic 256x256 JPEGs (smooth random colour fields, quality 90; no download) to a
temp folder and times `ImageDataModule.train_dataloader()` on it at each size, without and with the
pre-resized cache (`cache_dir`), with 0 workers and with the default (`num_workers: null`). A loader row
is the steady state: the first batch (worker start-up, cache open) is left out, then `--batches` batches
are timed. It also times the embedded-MNIST loader of configs/demo.yaml, and one training step (loss,
backward, Adam step) of configs/demo.yaml's network (batch 64) and of the CIFAR-10 NCSN++ of
configs/score_sde/ve_cifar10_ncsnpp_continuous.yaml (batch `--cifar-batch`) on `--device`.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from pds_lightning.data import Augment, ImageDataModule, Images, Split, Stats
from pds_lightning.data.sources import FolderSource
from pds_lightning.data.loading import available_cpus, default_num_workers
from pds_lightning.models import NCSNpp, ScoreModel
from pds_lightning.losses import DSMLoss
from pds_lightning.sde import VESDE

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
CIFAR10 = ROOT / "configs" / "score_sde" / "ve_cifar10_ncsnpp_continuous.yaml"


def write_jpegs(folder: Path, n: int, side: int = 256, seed: int = 0) -> None:
    """Smooth colour fields (8x8 noise upsampled) plus grain: JPEG sizes like photos', not like white noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((side, side), Image.BICUBIC)
        grain = rng.normal(0, 6, (side, side, 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def loader_rate(dm: ImageDataModule, batches: int) -> float:
    """Steady-state images/s of the training loader: the first batch excluded, then `batches` timed."""
    it = iter(dm.train_dataloader())
    next(it)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            count += len(next(it))
        except StopIteration:
            break
    return count / (time.perf_counter() - start)


def step_rate(net_args: dict, sde_args: dict, batch: int, reduce_mean: bool, device: str, repeats: int) -> float:
    """Images/s of one training step (loss, backward, Adam step), median of `repeats` after a warm-up."""
    net = NCSNpp(**net_args).to(device).train()
    sde = VESDE(**sde_args)
    score = ScoreModel(net, sde, continuous=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(batch, net_args["num_channels"], net_args["image_size"], net_args["image_size"], device=device)
    times = []
    for k in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = DSMLoss(reduce_mean=reduce_mean)(score, sde, x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - start)
    return batch / sorted(times)[len(times) // 2]


def scan_seconds(n: int) -> float:
    """Seconds for FolderSource to scan `n` empty .jpg files in folders of 1,000 (paths, sizes, mtimes, hash)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(n):
            sub = root / f"{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir()
            os.close(os.open(sub / f"{i:07d}.jpg", os.O_CREAT | os.O_WRONLY))
        start = time.perf_counter()
        assert len(FolderSource(root)) == n
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 256])
    parser.add_argument("--batch", type=int, default=64, help="loader batch size")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per loader row")
    parser.add_argument("--cifar-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed training steps per network")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=None, help="write the markdown table here too")
    parser.add_argument("--scan-files", type=int, default=0, help="only time the scan of this many empty files")
    args = parser.parse_args()
    if args.scan_files:
        print(f"{args.scan_files} files scanned in {scan_seconds(args.scan_files):.2f} s")
        return

    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {available_cpus()} CPUs "
             f"available ({platform.processor() or platform.machine()}), default num_workers "
             f"{default_num_workers()}, load average at start {os.getloadavg()[0]:.1f}", ""]
    workers = sorted({0, default_num_workers()})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        start = time.perf_counter()
        write_jpegs(folder, args.num_images)
        lines.append(f"{args.num_images} JPEGs of 256x256 written in {time.perf_counter() - start:.1f} s "
                     f"({sum(p.stat().st_size for p in folder.iterdir()) / args.num_images / 1024:.1f} KiB each)")
        common = dict(num_channels=3, val_size=0, stats_num_images=0, stats_cache_dir="", random_flip=True,
                      batch_size=args.batch, shuffle_seed=0)
        for size in args.sizes:
            for cached in (False, True):
                cache_dir = str(Path(tmp) / "cache") if cached else None
                build = ""
                if cached:
                    start = time.perf_counter()
                    ImageDataModule(str(folder), images=Images(size=size, cache_dir=cache_dir),
                                    num_workers=default_num_workers(), **common).setup("fit")
                    build = f"{time.perf_counter() - start:.1f} s"
                for w in workers:
                    dm = ImageDataModule(str(folder), images=Images(size=size, cache_dir=cache_dir), num_workers=w,
                                         **common)
                    dm.setup("fit")
                    rate = loader_rate(dm, args.batches)
                    rows.append((f"JPEG folder, {size} px", "yes" if cached else "no", w, f"{rate:,.0f}", build))
                    print(rows[-1], flush=True)
        for w in workers:
            dm = ImageDataModule("mnist", images=Images(size=32, num_channels=1), augment=Augment(random_flip=False),
                                 split=Split(val_size=256), stats=Stats(num_images=0), batch_size=64, num_workers=w,
                                 shuffle_seed=0)
            dm.setup("fit")
            rows.append(("embedded MNIST (configs/demo.yaml data), 32 px", "(array)", w,
                         f"{loader_rate(dm, args.batches):,.0f}", ""))
            print(rows[-1], flush=True)

    demo, cifar = yaml.safe_load(DEMO.read_text()), yaml.safe_load(CIFAR10.read_text())
    steps = []
    for name, config, batch in (("demo network (configs/demo.yaml), 32 px, 1 ch", demo, demo["data"]["batch_size"]),
                                ("CIFAR-10 NCSN++ (ve_cifar10_ncsnpp_continuous), 32 px", cifar, args.cifar_batch)):
        model = config["model"]
        rate = step_rate(model["net"]["init_args"], model["sde"]["init_args"], batch,
                         model.get("loss", {}).get("init_args", {}).get("reduce_mean", True), args.device,
                         args.repeats)
        steps.append((name, batch, args.device, f"{rate:,.1f}", f"{batch / rate * 1000:,.0f}"))
        print(steps[-1], flush=True)

    lines += ["", "| loader | cache | workers | images/s | cache build |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    lines += ["", "| training step (loss + backward + Adam) | batch | device | images/s | ms/step |",
              "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in steps]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output is not None:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
