"""Is the deterministic solvers' plateau on a trained model the probability-flow ODE's own answer?

Integrates the same sigma-space ODE, dx/dsigma = (x - D(x; sigma)) / sigma, from the same seeded draw
x = sigma_max z down to sigma_min with an adaptive solver (dopri5, torchdiffeq, tight tolerances), then
takes the same last Euler step to sigma = 0, and compares sample by sample with EDM Heun, DPM-Solver++(2M)
and Euler at a large NFE. If the solvers agree with the adaptive solve far more closely than the samples
differ from one another, their shared plateau is the ODE of the trained network, not a solver defect.
The solvers are benchmarks/samplers_vs_nfe.py's rows of these names, at the level count whose exact NFE is
closest to --budget (BUDGET). Writes ode_reference_<model>.md (+ .json) to --output-dir (default benchmarks/results).

    python -m benchmarks.ode_reference --model patches --num-samples 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchdiffeq import odeint

from benchmarks.common import MODELS, ROOT, Scorer, image_stack, load_model
from benchmarks.samplers_vs_nfe import for_budget, rows as sampler_rows
from pds_lightning.features import DigitFeatures
from pds_lightning.fileio import write_atomic
from pds_lightning.images import to_unit_range
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sampling import Karras
from pds_lightning.sampling.solvers import Denoiser

FIXED_STEP_ROWS = ("edm_heun", "dpmpp_2m", "euler")  # samplers_vs_nfe rows compared with dopri5
BUDGET = 200  # NFE per sample of each fixed-step solver (the nearest its step rule allows)


def adaptive_ode(model, seeds: torch.Tensor, shape, rtol: float, atol: float,
                 budget: int = BUDGET) -> tuple[torch.Tensor, int]:
    """(samples, NFE): dopri5 between the end points of the solvers' `budget`-level grid, then D(x; sigma_min)."""
    _, N, eps = model.sde.discretised(budget)
    sigmas = Karras().sigmas(model.sde, N, eps)
    sigma_max, sigma_min = float(sigmas[0]), float(sigmas[-2])
    denoise, calls = Denoiser(model.score_fn(ema=True), model.sde), [0]

    def drift(sigma, x):
        calls[0] += 1
        return (x - denoise(x, float(sigma))) / sigma

    noise = SeededNoise(seeds)
    x0 = sigma_max * noise.noise(torch.zeros(shape))
    # dopri5 may step past its end point and interpolate back; past sigma_min its stages would evaluate D at
    # sigma <= 0 (nan on an undertrained model), so no step may cross sigma_min.
    path = odeint(drift, x0, torch.tensor([sigma_max, sigma_min]), method="dopri5", rtol=rtol, atol=atol,
                  options={"step_t": torch.tensor([sigma_min])})
    calls[0] += 1
    return denoise(path[-1], sigma_min), calls[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="patches", choices=sorted(MODELS))
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--budget", type=int, default=BUDGET, help="NFE per sample of each fixed-step solver")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, dm = load_model(*MODELS[args.model])
    seeds = torch.arange(args.num_samples)
    shape = (args.num_samples, dm.images.num_channels, dm.images.size, dm.images.size)
    with torch.no_grad():
        t0 = time.perf_counter()
        raw, nfe = adaptive_ode(model, seeds, shape, args.rtol, args.atol, args.budget)
        raw = to_unit_range(raw, model.centered)
        reference = raw.clamp(0.0, 1.0)  # as ScoreModule.sample returns samples
        outside = {"fraction_of_pixels_outside_0_1": float(((raw < 0) | (raw > 1)).float().mean()),
                   "min": float(raw.min()), "max": float(raw.max())}
        rows = [{"solver": "dopri5", "nfe": nfe, "seconds": round(time.perf_counter() - t0, 1)}]
        spread = float((reference - reference.mean(0)).abs().mean())  # how much samples differ from each other
        samplers = sampler_rows()
        for method in FIXED_STEP_ROWS:
            sampler, _ = for_budget(samplers[method], model.sde, args.budget)
            result = model.sample(sampler, seeds)
            diff = (result.x - reference).abs()
            rows.append({"solver": method, "nfe": result.nfe, "mean_abs_diff": float(diff.mean()),
                         "max_abs_diff": float(diff.max())})
    scorer = Scorer(image_stack(dm, dm.val_indices), DigitFeatures())
    rows[0].update(scorer.score(reference))
    out = args.output_dir / f"ode_reference_{args.model}"
    budget = "" if args.budget == BUDGET else f" --budget {args.budget}"
    lines = [f"# Probability-flow ODE on the {args.model} model: fixed-step solvers vs an adaptive solve", "",
             f"Command: `python -m benchmarks.ode_reference --model {args.model} --num-samples {args.num_samples} "
             f"--rtol {args.rtol} --atol {args.atol}{budget}` (one CPU thread). Method: the script's docstring.", "",
             f"dopri5: {nfe} NFE; its samples' spectral error against the held-out images "
             f"{rows[0]['spectral_error']:.3f} ± {rows[0]['spectral_error_se']:.3f} ({args.num_samples} samples). "
             f"Mean |x - mean over samples| of its samples: {spread:.4f} (pixel units, data in [0, 1]). Before "
             f"the clamp to [0, 1] that `ScoreModule.sample` applies, {outside['fraction_of_pixels_outside_0_1']:.1%} "
             f"of its pixels lie outside [0, 1] (range {outside['min']:.2f} .. {outside['max']:.2f}).", "",
             "| solver | NFE | mean abs diff to dopri5 | max abs diff |", "|---|---|---|---|"]
    lines += [f"| {r['solver']} | {r['nfe']} | {r['mean_abs_diff']:.2e} | {r['max_abs_diff']:.2e} |" for r in rows[1:]]
    payload = {"spread": spread, "unclamped": outside, "rows": rows}
    write_atomic(out.with_suffix(".json"), (json.dumps(payload, indent=1) + "\n").encode())
    write_atomic(out.with_suffix(".md"), ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
