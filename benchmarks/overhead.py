"""What PDS costs per sampler step: PC steps with and without the preconditioner, and the operator alone.

Run: ``python benchmarks/overhead.py [--batch 8] [--steps 3] [--threads 1]`` (writes
benchmarks/results/overhead.md). Networks have random weights (cost does not depend on the values):
the demo NCSN++ (configs/demo.yaml) and the CIFAR-10 NCSN++ (configs/score_sde/ve_cifar10_ncsnpp_continuous.yaml).

A PC step (reverse diffusion + one Langevin correction) calls the network twice and, with PDS, the
operator four times: `drift` (M M^T g: two real FFT pairs and a pixel scaling) and `noise` (M z: one FFT
pair) in both the corrector and the predictor. The PDS share of a step is measured two ways: the step time
difference, and the operator time (2 drift + 2 noise on the same batch) over the PDS step time. The
operator alone is also timed at 256 and 1024 px (3 channels), where no CPU network run is practical.
Each figure is the minimum over `--repeats` runs (least disturbed by other processes; vanilla and PDS
runs interleaved). On a shared CPU the step difference is within timing noise when the operator is cheap:
the operator-based share is then the figure to read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from pds_lightning.callbacks import write_atomic
from pds_lightning.models import NCSNpp
from pds_lightning.models.score import ScoreModel
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sampling.samplers import pc_sampler
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = {"demo": "configs/demo.yaml", "CIFAR-10 NCSN++": "configs/score_sde/ve_cifar10_ncsnpp_continuous.yaml"}


def best_of(fn, repeats: int) -> float:
    """Minimum wall seconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def preconditioner_for(shape: tuple[int, int, int], alpha: float = 5.0) -> Preconditioner:
    """Both PDS filters from statistics of smooth random images (values do not change the cost)."""
    x = torch.rand((4, shape[0]) + tuple(s // 4 for s in shape[1:]))
    x = torch.nn.functional.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False)
    stats = ImageStatistics(shape).update(x)
    return Preconditioner.from_statistics(stats.freq_statistic(), stats.space_statistic(), alpha)


def load_network(config: str) -> tuple[ScoreModel, tuple[int, int, int]]:
    model = yaml.safe_load((ROOT / config).read_text())["model"]
    net = NCSNpp(**model["net"]["init_args"]).eval()
    sde = VESDE(**model["sde"]["init_args"])
    return ScoreModel(net, sde), (net.num_channels, net.image_size, net.image_size)


def time_steps(score: ScoreModel, shape, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Seconds per PC step without and with PDS, and of the operator work a PDS step adds."""
    pre = preconditioner_for(shape)
    seeds = list(range(batch))

    def run(p) -> float:
        start = time.perf_counter()
        pc_sampler(score, score.sde, (batch,) + shape, noise=SeededNoise(seeds, "cpu"), preconditioner=p,
                   n_steps=steps)
        return (time.perf_counter() - start) / steps

    run(None)
    # Interleaved, so a slow spell of a shared CPU hits both variants alike.
    pairs = [(run(None), run(pre)) for _ in range(repeats)]
    vanilla, pds = min(v for v, _ in pairs), min(p for _, p in pairs)
    g = torch.randn((batch,) + shape)
    operator = best_of(lambda: [pre.drift(g), pre.drift(g), pre.noise(g), pre.noise(g)], 5 * repeats)
    return {"vanilla": vanilla, "pds": pds, "operator": operator}


def time_operator(size: int, batch: int, repeats: int) -> dict[str, float]:
    shape = (3, size, size)
    pre = preconditioner_for(shape)
    g = torch.randn((batch,) + shape)
    return {"drift": best_of(lambda: pre.drift(g), repeats), "noise": best_of(lambda: pre.noise(g), repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="PC steps per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "overhead.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cmd = (f"python benchmarks/overhead.py --batch {args.batch} --steps {args.steps} --repeats {args.repeats} "
           f"--threads {args.threads}")
    lines = ["# PDS overhead per sampler step (CPU)", "",
             f"Generated by `{cmd}`; torch {torch.__version__}, {torch.get_num_threads()} thread(s). Method: the "
             "script's docstring (minimum over repeats; random weights).", "",
             f"## PC step (reverse diffusion + Langevin, 2 NFE), batch {args.batch}", "",
             "| network | vanilla (ms/step) | PDS (ms/step) | difference (noisy) | 2 drift + 2 noise (ms) | PDS share (operator / PDS step) |",
             "|---|---|---|---|---|---|"]
    for name, config in NETWORKS.items():
        score, shape = load_network(config)
        t = time_steps(score, shape, args.batch, args.steps, args.repeats)
        diff = (t["pds"] - t["vanilla"]) / t["pds"]
        lines.append(f"| {name} ({shape[1]} px, {shape[0]} ch) | {t['vanilla'] * 1e3:.1f} | {t['pds'] * 1e3:.1f} | "
                     f"{diff * 100:+.1f}% | {t['operator'] * 1e3:.2f} | {t['operator'] / t['pds'] * 100:.2f}% |")
        print(lines[-1], flush=True)
        del score
    lines += ["", "## PDS operator alone (3 channels, float32)", "",
              "| size | batch | drift M M^T g (ms) | noise M z (ms) | per PC step, 2 drift + 2 noise (ms) |",
              "|---|---|---|---|---|"]
    for size, batch in ((256, 1), (256, args.batch), (1024, 1)):
        t = time_operator(size, batch, args.repeats)
        lines.append(f"| {size} px | {batch} | {t['drift'] * 1e3:.1f} | {t['noise'] * 1e3:.1f} | "
                     f"{2 * (t['drift'] + t['noise']) * 1e3:.1f} |")
        print(lines[-1], flush=True)
    lines.append("")
    write_atomic(args.output, "\n".join(lines).encode())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
