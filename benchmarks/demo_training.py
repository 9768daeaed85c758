"""How fast the demo config reaches recognisable digits: read a demo run's TensorBoard log, score its samples.

    pds-lightning fit --config configs/demo.yaml            # the run (writes runs/demo)
    python -m benchmarks.demo_training --run runs/demo      # -> benchmarks/results/demo_training_run.md

"Recognisable" is measured, not eyeballed: the shipped digit classifier (`pds_lightning.features`, 97%
held-out accuracy) labels each sample, and a sample counts as a recognisable digit when the classifier's
top probability is >= 0.9. The same rule on the held-out real digits gives the ceiling. Timeline: the
validation grids the SamplingCallback logged (16 samples per setting and validation, same seeds each time),
at the wall-clock time TensorBoard recorded, measured from the first event of the run. The final
checkpoint is then sampled again with more seeds (`--num-samples`, PDS at the config's sampler) for a
tighter figure.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from benchmarks.common import ROOT, image_stack, load_model, save_grid
from pds_lightning.fileio import write_atomic
from pds_lightning.data import ImageDataModule, Images
from pds_lightning.features import load_digit_classifier

CONFIDENT = 0.9
TILE, PAD = 32, 2  # SamplingCallback grids: make_grid(padding=2), 32 px digits


def tiles(grid: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """The images of a make_grid(padding=2) grid [3, H, W] back as [N, 1, 32, 32] (first channel)."""
    rows = (grid.shape[1] - PAD) // (TILE + PAD)
    cols = min(nrow, (grid.shape[2] - PAD) // (TILE + PAD))
    out = [grid[:1, PAD + r * (TILE + PAD):PAD + r * (TILE + PAD) + TILE,
                PAD + c * (TILE + PAD):PAD + c * (TILE + PAD) + TILE] for r in range(rows) for c in range(cols)]
    return torch.stack(out)


@torch.no_grad()
def confident(classifier, images: torch.Tensor) -> tuple[float, float]:
    """(fraction of images whose top class probability is >= CONFIDENT, mean top probability)."""
    top = classifier(images.float()).softmax(-1).max(-1).values
    return float((top >= CONFIDENT).float().mean()), float(top.mean())


def timeline(run: Path, classifier) -> list[dict]:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    t0 = min(e.wall_time for tag in tags["scalars"] for e in events.Scalars(tag))
    loss = {e.step: e.value for e in events.Scalars("val/loss")} if "val/loss" in tags["scalars"] else {}
    rows = {}
    for tag in sorted(t for t in tags["images"] if t.startswith("samples/") and t != "samples/side_by_side"):
        for e in events.Images(tag):
            png = Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")
            grid = torch.frombuffer(bytearray(png.tobytes()), dtype=torch.uint8).reshape(png.height, png.width, 3)
            frac, mean = confident(classifier, tiles(grid.permute(2, 0, 1).float() / 255))
            # Lightning logs the validation loss at the last training step (global_step - 1).
            row = rows.setdefault(e.step, {"step": e.step, "minutes": (e.wall_time - t0) / 60,
                                           "val_loss": loss.get(e.step, loss.get(e.step - 1))})
            row[tag.split("/", 1)[1]] = (frac, mean)
    return [rows[k] for k in sorted(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo", help="the fit's root (default_root_dir)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "demo_training_run.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    classifier = load_digit_classifier()
    logs = sorted(args.run.rglob("events.out.tfevents.*"))
    if not logs:
        raise SystemExit(f"no TensorBoard events under {args.run}; run `pds-lightning fit --config {args.config}`")
    rows = timeline(logs[-1].parent, classifier)
    settings = [k for k in rows[-1] if k not in ("step", "minutes", "val_loss")]
    dm = ImageDataModule(source="mnist", images=Images(size=32, num_channels=1)).setup_images()
    real = image_stack(dm, dm.val_indices)
    real_frac, real_mean = confident(classifier, real)

    ckpt = args.run / "checkpoints" / "last.ckpt"
    model, _ = load_model(args.config, str(ckpt.resolve()))
    result = model.sample(model.sampler, torch.arange(args.num_samples))
    final_frac, final_mean = confident(classifier, result.x)
    grid_path = args.output.with_name(args.output.stem + "_final.png")
    save_grid(result.x, grid_path)

    lines = ["# Demo training: time to recognisable digits", "",
             f"Generated by `python -m benchmarks.demo_training --run {args.run.relative_to(ROOT) if args.run.is_relative_to(ROOT) else args.run}`"
             f" from the TensorBoard log of `pds-lightning fit --config {args.config}`. A sample is a recognisable "
             f"digit when the shipped digit classifier's top probability is >= {CONFIDENT} (held-out real digits: "
             f"{real_frac:.0%} pass, mean top probability {real_mean:.3f}).", "",
             "| step | minutes since start | val loss (EMA) | " + " | ".join(f"{s}: recognisable (16)" for s in settings) + " |",
             "|---" * (3 + len(settings)) + "|"]
    for r in rows:
        loss = "" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        cells = [f"{r[s][0]:.0%} (mean p {r[s][1]:.2f})" if s in r else "" for s in settings]
        lines.append(f"| {r['step']} | {r['minutes']:.1f} | {loss} | " + " | ".join(cells) + " |")
    lines += ["", f"Final checkpoint ({ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt}), "
              f"{args.num_samples} samples with `{model.sampler.name}` (seeds 0-{args.num_samples - 1}): "
              f"{final_frac:.0%} recognisable (mean top probability {final_mean:.3f}); grid: `{grid_path.name}`.", ""]
    text = "\n".join(lines)
    write_atomic(args.output, text.encode())
    print(text)


if __name__ == "__main__":
    main()
