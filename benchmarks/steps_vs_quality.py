"""Sample quality against step count, vanilla vs PDS, on the trained reference models.

    python -m benchmarks.steps_vs_quality --num-samples 1000            # the full run (a bigger machine)
    python -m benchmarks.steps_vs_quality --estimate --budget-minutes 40  # cost of one NFE -> samples that fit

For each model (`demo`: MNIST, `patches`: RGB photo patches) and each sampler (vanilla; PDS alpha 5; PDS
`alpha: auto` by the surrogate, `pds_auto`, and by pilot samples, `pds_pilot`) at each step count, the same seeds 0..N-1 are sampled
(common random numbers: differences between settings are not blurred by different noise) with the
PC sampler the models are configured with (reverse diffusion + Langevin, snr 0.16, 2 NFE per step; the
components are benchmarks/samplers_vs_nfe.py's rows of these names), and scored:

- spectral error (`metrics.log_spectral_distance`, decades) of the samples' mean power spectrum against
  the held-out images' (the data module's validation split, never trained on);
- FD-digits: Frechet distance of `features.DigitFeatures` (32 features of a small MNIST classifier; RGB
  patches go in as BT.601 gray) against the same held-out images. Not FID.

Standard errors: bootstrap over the N generated samples (200 resamples), the reference held fixed (it is
shared by all settings). The "floor" row scores N training images the same way: the value a perfect
sampler gets at this N. Results accumulate in `steps_vs_quality_<model>.json` (a rerun skips settings
already there with the same N; the two models may run as two processes), then the table, the plot and
one grid per setting are written.

Acceleration: vanilla's metric as a function of log(steps) is interpolated linearly between the measured
step counts; the steps vanilla needs to match PDS at S steps is where that curve first (scanning from few
steps to many) comes down to PDS's value; the factor is that step count / S.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from benchmarks.common import (MODELS, ROOT, Scorer, alpha_text, image_stack, load_model, markdown_table, pyplot,
                               save_figure, save_grid, training_images)
from benchmarks.samplers_vs_nfe import rows, with_steps
from pds_lightning.fileio import write_atomic
from pds_lightning.features import DigitFeatures
from pds_lightning.sampling import Sampler

STEPS = (20, 40, 66, 100, 200, 500, 1000)
# The grids kept in results/grids (README and the report link them); --grids writes one per (model, sampler, steps).
REPRESENTATIVE_GRIDS = {("demo", "vanilla", 40), ("demo", "pds_a5", 40), ("patches", "vanilla", 40),
                        ("patches", "pds_a5", 40)}


# ---- models, data, settings ------------------------------------------------------------------------
SAMPLERS = ("vanilla", "pds_a5", "pds_auto", "pds_pilot")


def samplers() -> tuple[dict[str, Sampler], list[str]]:
    """The compared samplers (name -> PC component without a step count) and notes on them."""
    table = rows()
    out = {name: table[name] for name in SAMPLERS}
    notes = ["`pds_auto`: alpha chosen by the Surrogate (Gaussian surrogate, no network calls); `pds_pilot`: chosen "
             f"by {out['pds_pilot'].pds.alpha.samples} pilot samples per candidate (seeds from 2^40, not the "
             "scored ones), whose cost is included in its wall time"]
    return out, notes


# ---- acceleration ------------------------------------------------------------------------------------
def matching_steps(vanilla: dict[int, float], target: float) -> tuple[float | None, str]:
    """Steps at which vanilla's curve (linear in log-steps) first comes down to `target`.

    Returns (steps, '') or (None, reason) when vanilla is already at least as good at its fewest steps
    ('<=N') or never gets there ('>N').
    """
    steps = sorted(vanilla)
    if vanilla[steps[0]] <= target:
        return None, f"<={steps[0]}"
    for lo, hi in zip(steps, steps[1:]):
        if vanilla[lo] > target >= vanilla[hi]:
            w = (vanilla[lo] - target) / (vanilla[lo] - vanilla[hi])
            return math.exp(math.log(lo) + w * (math.log(hi) - math.log(lo))), ""
    return None, f">{steps[-1]}"


def acceleration(results: list[dict], model: str, sampler: str, metric: str, at: int) -> str:
    rows = {r["steps"]: r[metric] for r in results if r["model"] == model and r["sampler"] == "vanilla"}
    pds = [r[metric] for r in results if r["model"] == model and r["sampler"] == sampler and r["steps"] == at]
    if not pds or len(rows) < 2:
        return "n/a"
    steps, reason = matching_steps(rows, pds[0])
    if steps is None:
        bound = int(reason.lstrip("<=>"))
        return f"vanilla {reason} steps (factor {reason[0]}{bound / at:.2f})"
    return f"vanilla ~{steps:.0f} steps (factor {steps / at:.2f}x)"


# ---- report ------------------------------------------------------------------------------------------
def fmt(value: float, se: float) -> str:
    digits = 3 if abs(value) < 10 else 1
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def write_report(path: Path, payload: dict) -> None:
    results, meta = payload["results"], payload["meta"]
    lines = ["# Sample quality against steps: vanilla vs PDS on the trained reference models", "",
             f"Generated by `{meta['command']}` ({meta['num_samples']} samples per setting, seeds "
             f"0-{meta['num_samples'] - 1} for every setting; {meta['threads']} CPU thread(s), "
             f"torch {meta['torch']}). Method, metrics and the acceleration rule: the script's docstring.",
             "", "Lower is better. ± is one bootstrap standard error over the generated samples (the "
             "reference is fixed). *floor*: the same number of training images scored the same way, i.e. "
             "what a perfect sampler gets at this sample count. FD-digits is a Frechet distance in the "
             "features of a small MNIST classifier (`pds_lightning.features`), **not FID**; for the RGB "
             "patches it is computed on BT.601 gray patches with a network that never saw natural images, "
             "so there the spectral error is the primary measure.", ""]
    lines += [f"- {note}" for note in meta.get("notes", [])]
    lines += [f"- reference of `{m}`: its {n} held-out validation images" for m, n in meta.get("reference", {}).items()]
    lines.append("")
    for model in meta["models"]:
        rows = [r for r in results if r["model"] == model]
        if not rows:
            continue
        steps = sorted({r["steps"] for r in rows})
        names = [s for s in meta["samplers"] if any(r["sampler"] == s for r in rows)]
        floor = meta["floor"][model]
        lines += [f"## {model} ({meta['configs'][model]}, checkpoint `{meta['checkpoints'][model]}`)", ""]
        row_of = {}
        for r in rows:
            row_of.setdefault((r["sampler"], r["steps"]), r)  # the first row of each cell
        heading = lambda s: f"{s} steps"
        for metric, label in (("spectral_error", "spectral error (decades)"), ("fd_digits", "FD-digits")):
            lines += [f"### {label}", ""] + markdown_table(
                names, steps, heading,
                lambda name, s: fmt(row_of[name, s][metric], row_of[name, s][metric + "_se"]) if (name, s) in row_of else "")
            lines += [f"| *floor* | {fmt(floor[metric], floor[metric + '_se'])} (training images) |", ""]
        lines += ["### wall time (s per setting, all samples; NFE per sample)", ""] + markdown_table(
            names, steps, heading,
            lambda name, s: f"{row_of[name, s]['wall_s']:.0f} ({row_of[name, s]['nfe']})" if (name, s) in row_of else "")
        for name in names:
            chosen = {r["steps"]: r["alpha"] for r in rows if r["sampler"] == name and "alpha" in r}
            if chosen:
                lines += ["", f"`{name}` resolved alpha to: " + ", ".join(
                    f"{alpha_text(a)} at {s}" for s, a in sorted(chosen.items())) + " steps."]
        missing = [s for s in STEPS if s not in steps]
        if missing:
            lines += ["", f"Not run at this sample count (cost): {', '.join(map(str, missing))} steps."]
        lines += ["", "### headline: steps vanilla needs to match PDS", "",
                  "Linear interpolation of vanilla's metric in log(steps) between measured step counts (rule in the "
                  "script's docstring); the factors inherit the ± of both curves and are not extrapolated beyond "
                  "the step counts run ('>N').", ""]
        for name in names[1:]:
            for metric in ("spectral_error", "fd_digits"):
                for at in (20, 40, 66, 100):
                    lines.append(f"- {name} at {at} steps, {metric}: {acceleration(results, model, name, metric, at)}")
        lines.append("")
    if meta.get("plot"):
        lines += [f"![quality against steps]({meta['plot']})", ""]
    lines += ["Grids (first 64 seeds), next to this file: `grids/<model>_<sampler>_<steps>.png`, for vanilla and "
              "pds_a5 at 40 steps (`--grids` writes every setting's).", ""]
    write_atomic(path, "\n".join(lines).encode())


def write_plot(path: Path, payload: dict) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    import matplotlib.ticker

    results, meta = payload["results"], payload["meta"]
    models = [m for m in meta["models"] if any(r["model"] == m for r in results)]
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 3.6 * len(models)), squeeze=False)
    for row, model in zip(axes, models):
        for ax, (metric, label) in zip(row, (("spectral_error", "spectral error (decades)"), ("fd_digits", "FD-digits"))):
            for name in meta["samplers"]:
                pts = sorted((r["steps"], r[metric], r[metric + "_se"]) for r in results
                             if r["model"] == model and r["sampler"] == name)
                if pts:
                    s, v, e = zip(*pts)
                    ax.errorbar(s, v, yerr=e, marker="o", capsize=3, label=name)
            ax.axhline(meta["floor"][model][metric], color="gray", ls="--", label="floor (training images)")
            ax.set_xscale("log")
            ax.set_xticks(sorted({r["steps"] for r in results}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("sampler steps (2 NFE each)")
            ax.set_title(f"{model}: {label}, {meta['num_samples']} samples")
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return True


# ---- main --------------------------------------------------------------------------------------------
def estimate(models: list[str], batch: int, budget_minutes: float, n_samplers: int, steps: list[int]) -> None:
    """Seconds per NFE per sample (batch `batch`) and the sample count that fits the budget."""
    per_sample = 0.0
    for name in models:
        model, _ = load_model(*MODELS[name])
        score = model.score_fn()
        x = torch.rand((batch,) + model.image_shape)
        t = torch.full((batch,), 0.5)
        with torch.no_grad():
            score(x, t)
            start = time.perf_counter()
            for _ in range(3):
                score(x, t)
        nfe_s = (time.perf_counter() - start) / 3
        nfe = n_samplers * sum(2 * s for s in steps)
        print(f"{name}: {nfe_s:.2f} s per NFE at batch {batch} ({nfe_s / batch * 1e3:.1f} ms per sample-NFE); "
              f"{nfe} NFE per sample over {n_samplers} samplers x steps {steps}")
        per_sample += nfe * nfe_s / batch
    print(f"total: {per_sample:.0f} s per sample; 1000 samples: {per_sample * 1000 / 3600:.1f} h; "
          f"{budget_minutes:.0f} min fit {int(budget_minutes * 60 // per_sample)} samples per setting")


def model_json(out: Path, name: str) -> Path:
    """One results file per model, so the two models can run as two processes (one core each)."""
    return out / f"steps_vs_quality_{name}.json"


def combine(out: Path, num_samples: int, command: str = "") -> dict:
    """The per-model results with `num_samples` samples, merged into one payload for the table and plot."""
    meta = {"num_samples": num_samples, "models": [], "configs": {}, "checkpoints": {}, "floor": {},
            "reference": {}, "samplers": [], "notes": [], "grid_dir": "grids",
            "command": command or f"python -m benchmarks.steps_vs_quality --num-samples {num_samples}"}
    results = []
    for name in MODELS:
        path = model_json(out, name)
        if not path.is_file():
            continue
        part = json.loads(path.read_text())
        if part["meta"]["num_samples"] != num_samples:
            continue
        m = part["meta"]
        meta["models"].append(name)
        meta["configs"][name], meta["checkpoints"][name] = MODELS[name]
        meta["floor"][name], meta["reference"][name] = m["floor"], m["reference"]
        meta["samplers"] = list(dict.fromkeys(meta["samplers"] + m["samplers"]))
        meta["notes"] = list(dict.fromkeys(meta["notes"] + m["notes"]))
        meta.update(threads=m["threads"], torch=m["torch"])
        results += part["results"]
    return {"meta": meta, "results": results}


def run_model(name: str, args, out: Path, features: DigitFeatures) -> None:
    """Sample and score every (sampler, steps) of one model not yet in its results file."""
    path = model_json(out, name)
    payload = json.loads(path.read_text()) if path.is_file() else {"results": []}
    if payload.get("meta", {}).get("num_samples") != args.num_samples:
        payload = {"results": []}  # another sample count: start over (a table holds one N only)
    model, dm = load_model(*MODELS[name])
    model.to(args.device)
    scorer = Scorer(image_stack(dm, dm.val_indices), features)
    settings, notes = samplers()
    payload["meta"] = {"num_samples": args.num_samples, "threads": args.threads, "torch": torch.__version__,
                       "floor": scorer.score(training_images(dm, args.num_samples)),
                       "reference": len(dm.val_indices), "samplers": list(settings), "notes": notes}
    seeds = torch.arange(args.num_samples)
    # Few steps first, so an interrupted run already has the cheap part of every curve.
    for steps in sorted(args.steps):
        for sampler, setting in settings.items():
            if any((r["sampler"], r["steps"]) == (sampler, steps) for r in payload["results"]):
                continue
            setting = with_steps(setting, steps).replace(name=f"{sampler}_{steps}")
            start = time.perf_counter()
            images, nfe, info = [], 0, {}
            for batch in seeds.split(args.batch_size):
                result = model.sample(setting, batch.to(args.device))
                images.append(result.x.cpu())
                nfe, info = result.nfe, result.info
            wall = time.perf_counter() - start
            images = torch.cat(images)
            row = {"model": name, "sampler": sampler, "steps": steps, "nfe": nfe, "wall_s": wall,
                   **scorer.score(images)}
            if "alpha_auto" in info:  # what `auto` resolved to (alpha None: vanilla) and why
                row["alpha"] = info["alpha_auto"]["alpha"]
                row["alpha_auto"] = {k: info["alpha_auto"][k] for k in ("method", "criterion", "value", "nfe")}
            if args.grids or (name, sampler, steps) in REPRESENTATIVE_GRIDS:
                save_grid(images, out / "grids" / f"{name}_{sampler}_{steps:04d}.png")
            payload["results"].append(row)
            write_atomic(path, json.dumps(payload, indent=1).encode())
            print(f"{name} {sampler} {steps} steps: spectral {row['spectral_error']:.3f}, "
                  f"FD-digits {row['fd_digits']:.2f}, {wall:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--estimate", action="store_true", help="only time one NFE and print the total cost")
    parser.add_argument("--budget-minutes", type=float, default=40.0)
    parser.add_argument("--grids", action="store_true",
                        help="write a grid for every (model, sampler, steps), not only the representative ones")
    parser.add_argument("--report-only", action="store_true", help="only rewrite table and plot from the results files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.num_samples < 2:
        raise SystemExit("--num-samples must be >= 2 (a Frechet distance needs a covariance)")
    if args.estimate:
        n_samplers = len(SAMPLERS)  # the pilot's own samples are not counted
        estimate(args.models, args.batch_size, args.budget_minutes, n_samplers, sorted(args.steps))
        return
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        features = DigitFeatures()
        for name in args.models:
            run_model(name, args, out, features)
    command = (f"python -m benchmarks.steps_vs_quality --num-samples {args.num_samples} --batch-size "
               f"{args.batch_size} --steps {' '.join(map(str, sorted(args.steps)))}")
    payload = combine(out, args.num_samples, command)
    if not payload["results"]:
        raise SystemExit(f"no results with {args.num_samples} samples in {out}; run without --report-only first")
    if write_plot(out / "steps_vs_quality.png", payload):
        payload["meta"]["plot"] = "steps_vs_quality.png"
    write_report(out / "steps_vs_quality.md", payload)
    print(f"wrote {out / 'steps_vs_quality.md'}")


if __name__ == "__main__":
    main()
