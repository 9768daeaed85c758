"""One grid, one row per sampler, same seeds: what the sampler comparison looks like on a trained model.

    python -m benchmarks.sampler_grid --model demo --n-steps 40 --num-samples 16 \
        --output benchmarks/results/grids/demo_samplers_40.png

Rows: EDM Heun (Karras), EDM stochastic (EDM's ImageNet-64 churn), PDS PC (alpha 5), all with n_steps noise
levels / steps (NFE 2N - 1, 2N - 1 and 2N): the components of benchmarks/samplers_vs_nfe.py's rows of these names.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from torchvision.utils import save_image

from benchmarks.common import MODELS, load_model
from benchmarks.samplers_vs_nfe import rows, with_steps
from pds_lightning.fileio import write_atomic

ROWS = ("edm_heun", "edm_stochastic", "pds_a5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", choices=list(MODELS))
    parser.add_argument("--n-steps", type=int, default=40, help="noise levels / PC steps of every row (>= 2)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(*MODELS[args.model])
    seeds = torch.arange(args.num_samples)
    samplers, images = rows(), []
    for name in ROWS:
        result = model.sample(with_steps(samplers[name], args.n_steps), seeds)
        print(f"{name}: NFE {result.nfe} per sample")
        images.append(result.x.cpu())
    buffer = io.BytesIO()
    save_image(torch.cat(images), buffer, format="png", nrow=args.num_samples)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output, buffer.getvalue())
    print(f"wrote {args.output} (rows: {', '.join(ROWS)})")


if __name__ == "__main__":
    main()
