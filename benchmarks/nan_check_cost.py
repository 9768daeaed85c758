"""Cost of the non-finite check (`check_finite_every=k`) as a share of PC sampling time.

    python -m benchmarks.nan_check_cost [--size 16] [--batch 16] [--steps 50] [--repeats 5] [--threads 1]

Samples with the tiny NCSN++ of tests/configs/tiny.yaml (random weights: the cost does not depend on
them) with a PDS PC sampler, k = 0 (off), 1 (every step) and 10, and prints the median wall time and the
overhead relative to k = 0. Runs on CPU or CUDA (--device).
"""

import argparse
import statistics
import time

import torch

from pds_lightning.models import NCSNpp
from pds_lightning.models.score import ScoreModel
from pds_lightning.sampling import PC, PDS
from pds_lightning.sampling import generate
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps timings stable on a shared host)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sde = VESDE(sigma_min=0.01, sigma_max=16.0, num_scales=100)
    net = NCSNpp(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, sigma_min=0.01,
                 sigma_max=16.0, num_scales=100, image_size=args.size, num_channels=1).to(args.device).eval()
    score = ScoreModel(net, sde, continuous=True)
    stats = ImageStatistics((1, args.size, args.size))
    stats.update(torch.rand(32, 1, args.size, args.size))
    seeds = torch.arange(args.batch, device=args.device)

    def run(k: int) -> float:
        sampler = PC(name=f"k{k}", steps=args.steps, pds=PDS(filters="both"), check_finite_every=k)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        generate(sampler, score, sde, seeds, (1, args.size, args.size), statistics=stats)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(0)  # warm-up
    ks = (0, 1, 10)
    times = {k: [] for k in ks}
    for _ in range(args.repeats):  # interleaved, so load changes hit every k alike
        for k in ks:
            times[k].append(run(k))
    base = statistics.median(times[0])
    print(f"device={args.device} image={args.size}px batch={args.batch} steps={args.steps} "
          f"repeats={args.repeats} (PC reverse_diffusion + langevin, PDS both)")
    for k in ks:
        m = statistics.median(times[k])
        print(f"check_finite_every={k:<3d} median {m * 1000:8.1f} ms  overhead {100 * (m - base) / base:+6.2f} %")
    # End-to-end differences drown in load noise on a shared machine; the check alone, timed directly
    # (isfinite + all + the host sync of `bool`), times the number of checks gives the share for k = 1.
    x = torch.randn(args.batch, 1, args.size, args.size, device=args.device)
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        bool(torch.isfinite(x).all())
    per_check = (time.perf_counter() - t0) / n
    print(f"one check {per_check * 1e6:.1f} us; k=1 share of sampling time: "
          f"{100 * per_check * args.steps / base:.3f} %")


if __name__ == "__main__":
    main()
