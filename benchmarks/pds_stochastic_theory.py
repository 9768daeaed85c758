"""Why PDS-shaped noise in DPM-Solver++(2M) SDE does or does not beat vanilla on the 64 px Gaussian target of
benchmarks/samplers_vs_nfe.py: the surrogate's exact per-mode recursion (pds_lightning.alpha.dpmpp_sde), exact here
(the target is Gaussian and stationary, its statistics exact).

    python -m benchmarks.pds_stochastic_theory

Per budget (N levels = N NFE), W2 per pixel of: vanilla (eta 1); the official frequency filter (b = R^2 in
[1, (alpha/(alpha-1))^2], eta_k = eta b_k) at its best alpha of the surrogate's candidates; vanilla at its best
global eta; and the per-mode optimum, eta_k chosen for each Fourier mode from a grid: the best any frequency-
diagonal B constant in sigma can do. Then, per band of modes by power: where vanilla's error sits (share of
W2^2), how much of it the per-mode eta_k removes, the best eta_k there (median weighted by how much eta_k changes
each mode's error) and the official filter's b at alpha 5. Last, the noise-level-dependent B(sigma) of
`UnresolvedBands` (b_k = scale / (1 + (lam_k / sigma^2)^sharpness), eta_k = eta b_k(sigma)): its default (4, 4) and
the best (scale, sharpness) of a small grid per budget; B(sigma) is no constant B, so the per-mode bound above does
not bound it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.common import ROOT, markdown_table
from benchmarks.samplers_vs_nfe import GaussianTarget

from pds_lightning.alpha import DEFAULT_CANDIDATES, GaussianSurrogate, Modes
from pds_lightning.alpha.dpmpp_sde import dpmpp_2m_sde_output_moments
from pds_lightning.fileio import write_atomic
from pds_lightning.preconditioner import unresolved_gains
from pds_lightning.sampling import DPMSolverPP2MSDE

BUDGETS = (10, 20, 40, 80)
ETAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0)
#: (scale, sharpness) grid of UnresolvedBands.
BAND_GRID = [(scale, sharpness) for scale in (1.0, 2.0, 3.0, 4.0, 6.0, 8.0) for sharpness in (1.0, 2.0, 4.0, 8.0)]
COMMAND = "python -m benchmarks.pds_stochastic_theory"


def per_mode_error(modes: Modes, gain, target: GaussianTarget, levels: int) -> torch.Tensor:
    """W2^2 contribution of every mode [A, K] for eta_k = gain (eta 1; a tensor, or a function of sigma):
    (sqrt v - sqrt lam)^2 + (gamma - 1)^2 |mu|^2."""
    v, gamma = dpmpp_2m_sde_output_moments(modes, gain, target.sde, DPMSolverPP2MSDE(steps=levels, eta=1.0))
    return (v.sqrt() - modes.lam.sqrt()).square() * modes.count + (gamma - 1).square() * modes.mean_sq


#: Bands of Fourier modes by their power lam (fractions of the modes, highest power first).
BANDS = (("top 1%", 0.0, 0.01), ("1-10%", 0.01, 0.1), ("10-50%", 0.1, 0.5), ("50-100%", 0.5, 1.0))


def bands(modes: Modes) -> list[torch.Tensor]:
    """Mode indices of each band of BANDS."""
    order, K = torch.argsort(modes.lam, descending=True), len(modes.lam)
    return [order[int(a * K):int(b * K)] for _, a, b in BANDS]


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> float:
    order = torch.argsort(values)
    cumulative = torch.cumsum(weights[order], 0) / weights.sum()
    return float(values[order][int((cumulative < 0.5).sum())])


def analyse(target: GaussianTarget, modes: Modes, levels: int) -> dict:
    pixels = target.lam.numel()
    w2 = lambda sq: sq.sum(-1).div(pixels).sqrt()
    etas = torch.tensor(ETAS, dtype=torch.float64)
    grid = per_mode_error(modes, etas[:, None].expand(len(ETAS), len(modes.lam)).clone(), target, levels)
    vanilla, best = grid[ETAS.index(1.0)], grid.min(0).values
    alphas = list(DEFAULT_CANDIDATES[1:])
    official = w2(per_mode_error(modes, modes.gains("freq", alphas, None), target, levels))
    b5 = modes.gains("freq", [5.0], None)[0]
    spread = grid.max(0).values - grid.min(0).values  # how much eta_k matters to each mode
    i = int(torch.argmin(w2(grid)))
    gains_of = lambda key: (lambda sigma: unresolved_gains(modes.lam, sigma, *key)[None])
    band_w2 = {key: float(w2(per_mode_error(modes, gains_of(key), target, levels))) for key in BAND_GRID}
    best_band = min(band_w2, key=band_w2.get)
    return {"vanilla": float(w2(vanilla)), "official": float(official.min()), "alpha": alphas[int(official.argmin())],
            "global": float(w2(grid)[i]), "eta": ETAS[i], "per_mode": float(w2(best)),
            "share": [float(vanilla[k].sum() / vanilla.sum()) for k in bands(modes)],
            "gain": [float((vanilla[k] - best[k]).sum() / vanilla.sum()) for k in bands(modes)],
            "best_eta": [weighted_median(etas[grid.argmin(0)][k], spread[k]) for k in bands(modes)],
            "b5": [float(b5[k].mean()) for k in bands(modes)],
            "bands": band_w2[(4.0, 4.0)], "bands_best": band_w2[best_band], "bands_key": best_band}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "pds_stochastic_theory.md")
    args = parser.parse_args()
    target = GaussianTarget()
    surrogate = GaussianSurrogate.from_statistics(target.statistics)
    modes = Modes.from_surrogate(surrogate, target.statistics.freq_statistic(torch.float64), max_modes=10 ** 6)
    results = {n: analyse(target, modes, n) for n in BUDGETS}
    rows = {"vanilla (eta 1)": lambda r: f"{r['vanilla']:.4f}",
            "official filter, best alpha": lambda r: f"{r['official']:.4f} (alpha {r['alpha']:g})",
            "vanilla, best global eta": lambda r: f"{r['global']:.4f} (eta {r['eta']:g})",
            "per-mode best eta_k (bound)": lambda r: f"{r['per_mode']:.4f}",
            "vanilla's W2^2, share per band": lambda r: " / ".join(f"{v:.2f}" for v in r["share"]),
            "W2^2 the per-mode eta_k removes, per band": lambda r: " / ".join(f"{v:.2f}" for v in r["gain"]),
            "best eta_k per band (median weighted by its effect)": lambda r: " / ".join(f"{v:g}" for v in r["best_eta"]),
            "official b = R^2 at alpha 5, mean per band": lambda r: " / ".join(f"{v:.2f}" for v in r["b5"]),
            "UnresolvedBands() (scale 4, sharpness 4)": lambda r: f"{r['bands']:.4f}",
            "UnresolvedBands, best of the grid": lambda r: "{:.4f} ({:g}, {:g})".format(r["bands_best"],
                                                                                     *r["bands_key"])}
    lines = ["# PDS-shaped noise in DPM-Solver++(2M) SDE on the 64 px Gaussian target: the per-mode theory", "",
             f"Generated by `{COMMAND}` (method: its docstring; exact per-mode recursion, no sampling). "
             "W2 per pixel; lower is better. Bands of Fourier modes by power, highest first: "
             + ", ".join(name for name, _, _ in BANDS) + " of the modes.", ""]
    lines += markdown_table(list(rows), list(BUDGETS), lambda b: f"{b} NFE", lambda name, b: rows[name](results[b]))
    write_atomic(args.output, "\n".join(lines + [""]).encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
