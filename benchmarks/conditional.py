"""Class-conditional demo: does the generated digit have the asked class? Accuracy of the shipped digit
classifier (pds_lightning.features) on samples of the conditional demo model at guidance scales 0, 1, 3,
vanilla vs PDS (alpha 5, both filters), 40 and 100 PC steps. Seed s asks for class s % 10 (data.predict.classes 0-9).
Writes benchmarks/results/conditional.md (+ .json).

    OMP_NUM_THREADS=1 nice -n 5 python -m benchmarks.conditional --ckpt runs/demo_conditional/checkpoints/last.ckpt

On two cores, run `--methods vanilla --output /tmp/a` and `--methods pds --output /tmp/b` side by side, then
`--merge /tmp/a.json /tmp/b.json` writes the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import ROOT, image_stack, load_model
from pds_lightning.features import load_digit_classifier
from pds_lightning.fileio import write_atomic
from pds_lightning.sampling import PC, PDS

CONFIG = "configs/demo_conditional.yaml"
METHODS = {"vanilla": "none", "pds": "both"}


def binomial_stderr(p: float, n: int) -> float:
    """The binomial standard error sqrt(p (1 - p) / n) of an accuracy p over n samples (floored at 1/n)."""
    return (max(p * (1 - p), 1.0 / n) / n) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default="runs/demo_conditional/checkpoints/last.ckpt")
    parser.add_argument("--num", type=int, default=100, help="samples per setting (seeds 0..num-1)")
    parser.add_argument("--scales", default="0,1,3")
    parser.add_argument("--steps", default="40,100")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--methods", default="vanilla,pds")
    parser.add_argument("--merge", nargs="+", help="json outputs of earlier runs to join into one table")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "conditional"))
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        meta = dict(parts[0]["meta"], merged=len(parts))
        write_results(Path(args.output), meta, [r for part in parts for r in part["rows"]])
        return
    torch.set_num_threads(1)
    model, dm = load_model(CONFIG, args.ckpt)
    ckpt = torch.load(Path(args.ckpt), map_location="cpu", weights_only=True)
    classifier = load_digit_classifier()
    seeds = torch.arange(args.num)
    classes = seeds % 10
    rows = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for scale in [float(w) for w in args.scales.split(",")]:
            for method in args.methods.split(","):
                filters = METHODS[method]
                sampler = PC(name=f"{method}_{steps}_w{scale:g}", steps=steps, guidance_scale=scale,
                             pds=None if filters == "none" else PDS(filters=filters, alpha=5.0))
                t0 = time.perf_counter()
                x = model.generate_images(seeds, sampler, batch_size=args.batch, classes=classes)
                seconds = time.perf_counter() - t0
                with torch.no_grad():
                    predicted = classifier(x).argmax(1)
                acc = (predicted == classes).float().mean().item()
                rows.append({"method": method, "steps": steps, "guidance_scale": scale, "accuracy": acc,
                             "stderr": binomial_stderr(acc, args.num), "n": args.num, "seconds": seconds})
                print(rows[-1], flush=True)
    meta = {"checkpoint": str(args.ckpt), "global_step": int(ckpt.get("global_step", -1)), "config": CONFIG,
            "num": args.num, "real": real_accuracy(classifier, dm)}
    write_results(Path(args.output), meta, rows)


def real_accuracy(classifier, dm) -> dict:
    """The classifier's accuracy on the held-out real digits: what a perfect conditional sampler would score."""
    x = image_stack(dm, dm.val_indices)
    labels = dm.labels[torch.as_tensor(dm.val_indices)]
    with torch.no_grad():
        acc = (classifier(x).argmax(1) == labels).float().mean().item()
    return {"accuracy": acc, "stderr": binomial_stderr(acc, len(x)), "n": len(x)}


def write_results(out: Path, meta: dict, rows: list[dict]) -> None:
    write_atomic(out.with_suffix(".json"), json.dumps({"meta": meta, "rows": rows}, indent=1).encode())
    num = meta["num"]
    lines = [f"# Conditional demo: classifier accuracy on generated digits\n",
             f"Model: `{CONFIG}` at step {meta['global_step']} ({meta['checkpoint']}). {num} samples per cell, seed s asks "
             "for digit s % 10; accuracy of the shipped digit classifier (`pds_lightning.features`), "
             "+- one binomial standard error. PC sampler (reverse diffusion + Langevin, snr 0.16); PDS: alpha 5, "
             "both filters. Guidance: s_u + (1 + w)(s_c - s_u).\n",
             f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.conditional --ckpt {meta['checkpoint']} --num {num}`"
             + (" (per-method runs in parallel, joined with `--merge`)" if meta.get("merged", 0) > 1 else "")
             + ". Sampling time per cell in the json.\n",
             *([f"Reference: the classifier on {meta['real']['n']} held-out real digits scores "
                f"{meta['real']['accuracy']:.2f} +- {meta['real']['stderr']:.2f} (a perfect conditional sampler).\n"]
               if "real" in meta else []),
             "| steps | w | vanilla | PDS |", "|---|---|---|---|"]
    for steps in sorted({r["steps"] for r in rows}):
        for scale in sorted({r["guidance_scale"] for r in rows}):
            cell = {r["method"]: r for r in rows if r["steps"] == steps and r["guidance_scale"] == scale}
            lines.append(f"| {steps} | {scale:g} | " + " | ".join(
                f"{cell[m]['accuracy']:.2f} +- {cell[m]['stderr']:.2f}" if m in cell else "-" for m in METHODS) + " |")
    write_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())


if __name__ == "__main__":
    main()
