"""Does PDS help inpainting and colorization at 20-100 steps? Vanilla vs PDS (alpha 5, both filters; 'project'
and 'subspace' restrictions) on a trained reference model and its held-out validation images.

Inpainting fills the centre square (half the side); colorization (RGB models) recovers the two chroma axes
from the gray axis. Scores against the held-out truth: MSE over the unknown part (mean over images, bootstrap
standard error, and paired against vanilla on the same images and seeds) and the spectral error of the
filled part (inpainting: the centre crops; colorization: the chroma, image minus its gray) against the
truth's, as the log-spectral distance of their mean power spectra. Writes benchmarks/results/<task>_<model>.md (+ .json).

    nice -n 10 python -m benchmarks.inpainting --model demo --task inpaint
    nice -n 10 python -m benchmarks.inpainting --model patches --task colorize
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import MODELS, ROOT, image_stack, load_model, save_grid
from pds_lightning.data.tasks import Colorize, Inpaint, builtin_mask
from pds_lightning.fileio import write_atomic
from pds_lightning.images import to_model_space, to_unit_range
from pds_lightning.metrics import log_spectral_distance
from pds_lightning.sampling import generate
from pds_lightning.sampling.conditional import clip_keeping_gray
from pds_lightning.sampling import PC, PDS
from pds_lightning.statistics import ImageStatistics

METHODS = {"vanilla": ("none", "project"), "pds_project": ("both", "project"), "pds_subspace": ("both", "subspace")}
TASK_NAMES = {"inpaint": "inpainting", "colorize": "colorization"}
BOOTSTRAP = 200
GRID_IMAGES = 8


def centre(x: torch.Tensor) -> torch.Tensor:
    """The centre square of half the side (the built-in 'center' mask's unknown region)."""
    q, h = x.shape[-1] // 4, x.shape[-1] // 2
    return x[..., q:q + h, q:q + h]


def spectral(x: torch.Tensor, ref: torch.Tensor) -> float:
    power = lambda v: ImageStatistics(v.shape[1:]).update(v).power_mean  # noqa: E731
    return log_spectral_distance(power(x), power(ref))


def bootstrap_se(values: torch.Tensor) -> float:
    """Standard error of the mean of per-image values (bootstrap over images)."""
    g = torch.Generator().manual_seed(0)
    boot = [values[torch.randint(0, len(values), (len(values),), generator=g)].mean() for _ in range(BOOTSTRAP)]
    return float(torch.stack(boot).std())


class Task:
    """What one task knows, fills and scores: the known part, the output in [0, 1], the unknown region."""

    def __init__(self, kind: str, truth: torch.Tensor, centered: bool):
        self.kind, self.truth, self.centered = kind, truth, centered
        if kind == "inpaint":
            self.mask = builtin_mask("center", truth.shape[-1])[None]
            self.unknown = (1 - self.mask).bool().expand_as(truth)
            self.known = Inpaint("benchmark").known_part(to_model_space(truth * self.mask, centered), self.mask)
        else:
            self.mask = self.unknown = None
            self.known = Colorize("benchmark").known_part(to_model_space(truth, centered), None)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> images in [0, 1], the known part checked unchanged."""
        filled = to_unit_range(x, self.centered)
        if self.kind == "inpaint":
            filled = filled.clamp(0, 1)
            assert torch.equal(filled * self.mask, self.truth * self.mask), "known pixels changed"
        else:
            filled = clip_keeping_gray(filled).clamp(0, 1)
            gray_error = (filled.mean(1) - self.truth.mean(1)).abs().max()
            assert gray_error < 1e-4, f"gray changed by {gray_error}"
        return filled

    def mse_per_image(self, filled: torch.Tensor) -> torch.Tensor:
        if self.kind == "colorize":  # the gray axis is exact, so this is the chroma error
            return ((filled - self.truth) ** 2).flatten(1).mean(1)
        return ((filled - self.truth) ** 2)[self.unknown].view(len(self.truth), -1).mean(1)

    def spectral_error(self, filled: torch.Tensor) -> float:
        if self.kind == "colorize":  # the colour alone: the gray part is the same in both
            # mapped into [0, 1] for ImageStatistics; the same affine map of both leaves the distance as it is
            chroma = lambda x: (x - x.mean(1, keepdim=True) + 1) / 2  # noqa: E731
            return spectral(chroma(filled), chroma(self.truth))
        return spectral(centre(filled), centre(self.truth))

    def shown_input(self) -> torch.Tensor:
        """What the sampler was given, as an image: the known pixels on mid-gray, or the gray image."""
        if self.kind == "colorize":
            return self.truth.mean(1, keepdim=True).expand_as(self.truth)
        return self.truth * self.mask + 0.5 * (1 - self.mask)

    def baseline(self) -> tuple[str, float]:
        """The MSE of the trivial fill: mean gray in the hole, or the gray image itself (zero chroma)."""
        if self.kind == "colorize":
            return "the gray image itself (no colour)", float(((self.shown_input() - self.truth) ** 2).mean())
        return "the mean gray", float(((self.truth.mean() - self.truth) ** 2)[self.unknown].mean())

    def score(self, filled: torch.Tensor, vanilla_mse: torch.Tensor | None) -> dict:
        per_image = self.mse_per_image(filled)
        out = {"mse": float(per_image.mean()), "mse_se": bootstrap_se(per_image),
               "spectral_error": self.spectral_error(filled)}
        if vanilla_mse is not None:  # paired: the same images and seeds
            diff = per_image - vanilla_mse
            out.update(mse_minus_vanilla=float(diff.mean()), mse_minus_vanilla_se=bootstrap_se(diff))
        return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", choices=sorted(MODELS))
    parser.add_argument("--task", default="inpaint", choices=sorted(TASK_NAMES))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, nargs="+", default=[20, 40, 100])
    parser.add_argument("--alpha", type=float, default=5.0)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<task>_<model>")
    args = parser.parse_args(argv)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{TASK_NAMES[args.task]}_{args.model}")
    torch.set_num_threads(1)
    model, dm = load_model(*MODELS[args.model])
    task = Task(args.task, image_stack(dm, dm.val_indices[: args.images]), model.centered)
    seeds = list(range(args.images))
    rows, shown = [], {}
    for n in args.steps:
        vanilla_mse = None
        for name, (preconditioner, restrict) in METHODS.items():
            pds = None if preconditioner == "none" else PDS(filters=preconditioner, alpha=args.alpha, restrict=restrict)
            sampler = PC(name=name, steps=n, pds=pds)
            t0 = time.perf_counter()
            result = generate(sampler, model.score_fn(ema=True), model.sde, seeds, None, model.data_statistics,
                              known=task.known)
            filled = task.output(result.x)
            row = {"method": name, "n_steps": n, "nfe": result.nfe, "seconds": round(time.perf_counter() - t0, 1),
                   **task.score(filled, vanilla_mse)}
            if name == "vanilla":
                vanilla_mse = task.mse_per_image(filled)
            if n == max(args.steps):
                shown[name] = filled[:GRID_IMAGES]
            rows.append(row)
            print(json.dumps(row), flush=True)
    # one row each: input, every method at the largest step count, truth
    save_grid(torch.cat([task.shown_input()[:GRID_IMAGES], *shown.values(), task.truth[:GRID_IMAGES]]),
              out.with_suffix(".png"), nrow=GRID_IMAGES)
    write_report(out, rows, args, task)


def write_report(out: Path, rows: list[dict], args, task: Task) -> None:
    config = MODELS[args.model][0]
    size = tuple(task.truth.shape[1:])
    what = (f"centre {size[-1] // 2}x{size[-1] // 2} square unknown; MSE over the unknown pixels; spectral error of "
            "the filled vs the true centre crops" if args.task == "inpaint" else
            "gray axis known (score_sde's orthonormal colour basis), the two chroma axes unknown; MSE over all "
            "pixels and channels (= the chroma error, the gray being exact); spectral error of the chroma "
            "(image minus its gray) of the coloured vs the true images")
    baseline_what, baseline = task.baseline()
    lines = [f"# {TASK_NAMES[args.task].capitalize()}: vanilla vs PDS on the {args.model} model", "",
             f"Command: `nice -n 10 python -m benchmarks.inpainting --model {args.model} --task {args.task} "
             f"--images {args.images} --steps {' '.join(map(str, args.steps))} --alpha {args.alpha}` (one CPU "
             f"thread; model `{config}`, checkpoint `{MODELS[args.model][1]}`).", "",
             f"{args.images} held-out validation images {size}, one completion per image (seed = image position); "
             f"{what}. Reverse diffusion + Langevin (snr 0.16), known part re-imposed after every update "
             f"(score_sde). PDS: both filters from the checkpoint's statistics, alpha {args.alpha}; `project` = M "
             "on the whole image then re-imposition, `subspace` = M' = P M. Lower is better for both scores; MSE "
             "in [0, 1] units (± bootstrap SE over images; the paired column is PDS minus vanilla per image); "
             "spectral error = log-spectral distance of mean power spectra.", "",
             f"Reference: {baseline_what} gives MSE {baseline:.4f}.", "",
             f"Grid `{out.with_suffix('.png').name}`: the first {GRID_IMAGES} images; rows: input, "
             + ", ".join(METHODS) + f" at {max(args.steps)} steps, truth.", "",
             "| steps | method | NFE | MSE | MSE - vanilla (paired) | spectral error | s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        paired = (f"{r['mse_minus_vanilla']:+.4f} ± {r['mse_minus_vanilla_se']:.4f}" if "mse_minus_vanilla" in r
                  else "")
        lines.append(f"| {r['n_steps']} | {r['method']} | {r['nfe']} | {r['mse']:.4f} ± {r['mse_se']:.4f} "
                     f"| {paired} | {r['spectral_error']:.3f} | {r['seconds']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out.with_suffix(".json"), (json.dumps(rows, indent=1) + "\n").encode())
    write_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
