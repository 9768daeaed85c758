"""CPU forward time and peak memory of the CIFAR-10 NCSN++ config and of the demo preset.

Run: ``python -m benchmarks.network_forward [--batch 8] [--repeats 3]``. Peak memory is the process's
maximum resident set size (ru_maxrss) growth during the forward passes, on top of the loaded weights.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
import yaml

from pds_lightning.models import NCSNpp
from pds_lightning.models.presets import demo

CIFAR10 = Path(__file__).resolve().parents[1] / "configs" / "score_sde" / "ve_cifar10_ncsnpp_continuous.yaml"


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def time_forward(net: torch.nn.Module, batch: int, repeats: int) -> tuple[float, float]:
    """Median seconds per forward (after one warm-up) and ru_maxrss growth in MiB."""
    net.eval()
    x = torch.rand(batch, net.num_channels, net.image_size, net.image_size)
    labels = torch.full((batch,), 1.0)
    before = max_rss_mib()
    times = []
    with torch.no_grad():
        net(x, labels)
        for _ in range(repeats):
            start = time.perf_counter()
            net(x, labels)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], max_rss_mib() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    net_args = yaml.safe_load(CIFAR10.read_text())["model"]["net"]["init_args"]
    rss0 = max_rss_mib()
    cifar = NCSNpp(**net_args)
    weights = max_rss_mib() - rss0
    n = sum(p.numel() for p in cifar.parameters())
    seconds, peak = time_forward(cifar, args.batch, args.repeats)
    print(f"CIFAR-10 NCSN++ ({n / 1e6:.1f}M params, 32 px), batch {args.batch}: {seconds * 1000:.0f} ms/forward, "
          f"peak RSS +{weights:.0f} MiB for weights, +{peak:.0f} MiB during forward")
    del cifar

    demo_net = NCSNpp(**demo())
    n = sum(p.numel() for p in demo_net.parameters())
    seconds, _ = time_forward(demo_net, args.batch, args.repeats)
    print(f"demo preset ({n / 1e3:.0f}k params, 32 px, 1 channel), batch {args.batch}: {seconds * 1000:.1f} ms/forward")


if __name__ == "__main__":
    main()
