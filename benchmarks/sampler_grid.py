"""One grid, one row per sampler, same seeds: what the sampler comparison looks like on a trained model.

    python -m benchmarks.sampler_grid --model demo --n-steps 40 --num-samples 16 \
        --output benchmarks/results/grids/demo_samplers_40.png

Rows: EDM Heun (Karras), EDM stochastic (EDM's ImageNet-64 churn), PDS PC (alpha 5), all with n_steps noise
levels / steps (NFE 2N - 1, 2N - 1 and 2N).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from torchvision.utils import save_image

from benchmarks.common import MODELS, load_model

ROWS = {
    "edm_heun": dict(method="edm_heun", preconditioner="none"),
    "edm_stochastic": dict(method="edm_stochastic", preconditioner="none", S_churn=40.0, S_tmin=0.05,
                           S_tmax=50.0, S_noise=1.003),
    "pds_a5": dict(method="pc", preconditioner="both", alpha=5.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo", choices=list(MODELS))
    parser.add_argument("--n-steps", type=int, default=40)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _ = load_model(*MODELS[args.model])
    seeds = torch.arange(args.num_samples)
    rows = []
    for name, fields in ROWS.items():
        settings = dataclasses.replace(model.sampler, n_steps=args.n_steps, **fields)
        result = model.sample(settings, seeds)
        print(f"{name}: NFE {result.nfe} per sample")
        rows.append(result.x.cpu())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows), args.output, nrow=args.num_samples)
    print(f"wrote {args.output} (rows: {', '.join(ROWS)})")


if __name__ == "__main__":
    main()
