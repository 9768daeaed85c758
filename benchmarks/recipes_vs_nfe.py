"""score_sde recipe against EDM recipe at equal NFE, and issue 25's goal, from samplers_vs_nfe rows.

    bash benchmarks/recipes_vs_nfe.sh demo 256 /tmp/r_demo            # one process per model (85 min each on one core)
    bash benchmarks/recipes_vs_nfe.sh demo_edm 256 /tmp/r_demo_edm
    bash benchmarks/recipes_vs_nfe.sh patches 128 /tmp/r_p             # 33 min each on one core
    bash benchmarks/recipes_vs_nfe.sh patches_edm 128 /tmp/r_pe
    python -m benchmarks.samplers_vs_nfe --output-dir benchmarks/results/recipes \\
        --merge /tmp/r_demo/samplers_vs_nfe.json /tmp/r_demo_edm/samplers_vs_nfe.json \\
        /tmp/r_p/samplers_vs_nfe.json /tmp/r_pe/samplers_vs_nfe.json
    python -m benchmarks.recipes_vs_nfe benchmarks/results/recipes/samplers_vs_nfe.json

Writes recipes_vs_nfe.md beside the json: for each pair (demo / demo_edm, patches / patches_edm) present,
every sampler side by side per budget, the best sampler per budget and model, and the goal: the EDM model's
best at 20 NFE against the score_sde model's best at 200, its best at 10 against the score_sde best at 40
(rows of one run: same seeds and sample count). "Best" is per metric (spectral error, FD-digits).
A goal is met when the EDM figure is at most the score_sde one; a shortfall smaller than the two standard
errors combined (sqrt(se_a^2 + se_b^2)) is reported as within noise, not as met.

Issue 33's goal, per model and budget (10, 20, 40, 80): the best preconditioned row (a sampler whose component has
`pds`: PDS or UnresolvedBands) against the best unpreconditioned one, both by spectral error. Met when the
preconditioned spectral error is lower by more than their combined standard error and its FD-digits is not higher
by more than theirs; the goal asks for two budgets or more on every model.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from benchmarks.common import alpha_text
from benchmarks.samplers_vs_nfe import rows as sampler_rows

from pds_lightning.fileio import write_atomic

PAIRS = (("demo", "demo_edm"), ("patches", "patches_edm"))
METRICS = (("spectral_error", "spectral error"), ("fd_digits", "FD-digits"))
#: (EDM model's budget, score_sde model's budget) of issue 25's goal.
GOALS = ((20, 200), (10, 40))
#: Budgets of issue 33's goal.
PDS_BUDGETS = (10, 20, 40, 80)


def preconditioned() -> set[str]:
    """Names of the benchmark rows whose sampler has a `pds` component."""
    return {name for name, sampler in sampler_rows().items() if sampler.pds is not None}


def figure(r: dict | None) -> str:
    """'spectral ± se / FD ± se', with the alpha an `auto` row resolved to."""
    if r is None:
        return "-"
    text = f"{r['spectral_error']:.3f} ± {r['spectral_error_se']:.3f} / {r['fd_digits']:.0f} ± {r['fd_digits_se']:.0f}"
    return text + (f" (alpha {alpha_text(r['alpha'])})" if "alpha" in r else "")


def best(rows: list[dict], model: str, budget: int, metric: str) -> dict | None:
    """The row with the lowest `metric` among `model`'s rows at `budget`."""
    cands = [r for r in rows if r["model"] == model and r["budget"] == budget and r.get(metric) is not None]
    return min(cands, key=lambda r: r[metric], default=None)


def verdict(edm: dict, base: dict, metric: str) -> str:
    a, b = edm[metric], base[metric]
    if a <= b:
        return "met"
    noise = math.hypot(edm[metric + "_se"], base[metric + "_se"])
    return f"within noise (short by {a - b:.3g} < {noise:.3g})" if a - b < noise else f"not met (short by {a - b:.3g})"


def goal_lines(rows: list[dict], floor: dict | None, base: str, edm: str) -> list[str]:
    """The goal's table; `floor` (training images scored alike) shows where a metric stops telling sets apart."""
    lines = ["| goal | metric | EDM recipe best | score_sde recipe best | verdict | floor (training images) |",
             "|---|---|---|---|---|---|"]
    for b_edm, b_base in GOALS:
        for metric, label in METRICS:
            e, s = best(rows, edm, b_edm, metric), best(rows, base, b_base, metric)
            f = "-" if floor is None else f"{floor[metric]:.4g} ± {floor[metric + '_se']:.2g}"
            if e is None or s is None:
                lines.append(f"| {edm} @{b_edm} vs {base} @{b_base} | {label} | - | - | not measured | {f} |")
                continue
            lines.append(f"| {edm} @{b_edm} vs {base} @{b_base} | {label} | `{e['sampler']}` "
                         f"{e[metric]:.4g} ± {e[metric + '_se']:.2g} | `{s['sampler']}` {s[metric]:.4g} ± "
                         f"{s[metric + '_se']:.2g} | {verdict(e, s, metric)} | {f} |")
    return lines


def pds_goal(rows: list[dict], model: str, budget: int, metric: str = "spectral_error"):
    """(best preconditioned row, best unpreconditioned row, verdict) by `metric` at `budget`, the other metric
    not worse beyond the combined SE. An alpha chooser's row that chose vanilla counts as unpreconditioned."""
    with_pds = preconditioned()
    mine = [r for r in rows if r["model"] == model and r["budget"] == budget]
    is_pds = lambda r: r["sampler"] in with_pds and not ("alpha" in r and r["alpha"] is None)
    pick = lambda group: min(group, key=lambda r: r[metric], default=None)
    p, u = pick([r for r in mine if is_pds(r)]), pick([r for r in mine if not is_pds(r)])
    if p is None or u is None:
        return p, u, "not measured"
    other = next(m for m, _ in METRICS if m != metric)
    noise = {m: math.hypot(p[m + "_se"], u[m + "_se"]) for m, _ in METRICS}
    gain, excess = u[metric] - p[metric], p[other] - u[other]
    label, other_label = dict(METRICS)[metric], dict(METRICS)[other]
    if gain <= 0:
        return p, u, f"not met ({label} higher by {-gain:.3g})"
    if gain <= noise[metric]:
        return p, u, f"within noise ({label} lower by {gain:.3g} <= {noise[metric]:.3g})"
    if excess > noise[other]:
        return p, u, f"not met ({other_label} higher by {excess:.3g} > {noise[other]:.3g})"
    return p, u, "met"


def pds_goal_lines(rows: list[dict], models: list[str], metric: str = "spectral_error") -> list[str]:
    lines = ["| model | NFE budget | best preconditioned | best unpreconditioned | verdict |", "|---|---|---|---|---|"]
    for model in models:
        met = 0
        for b in PDS_BUDGETS:
            p, u, v = pds_goal(rows, model, b, metric)
            met += v == "met"
            show = lambda r: "-" if r is None else f"`{r['sampler']}` ({r['nfe']}) {figure(r)}"
            lines.append(f"| {model} | {b} | {show(p)} | {show(u)} | {v} |")
        lines.append(f"| {model} | | | | **{met} of {len(PDS_BUDGETS)} budgets met** |")
    return lines


def pair_lines(rows: list[dict], floor: dict, base: str, edm: str) -> list[str]:
    mine = [r for r in rows if r["model"] in (base, edm)]
    counts = sorted({r["num_samples"] for r in mine})
    budgets = sorted({r["budget"] for r in mine})
    names = list(dict.fromkeys(r["sampler"] for r in mine))
    cell = {(r["model"], r["sampler"], r["budget"]): r for r in mine}
    lines = [f"## {base} (score_sde recipe) vs {edm} (EDM recipe)", "",
             f"Samples per row: {', '.join(map(str, counts))}; cells: spectral error / FD-digits ± one bootstrap "
             f"SE, lower is better; NFE is the exact count of the {base} row (the same for {edm} except "
             f"where noted).", "", "### Goal (issue 25)", "", *goal_lines(rows, floor.get(base), base, edm), "",
             "### Goal (issue 33): preconditioned against unpreconditioned", "", *pds_goal_lines(rows, [base, edm]),
             "", "The same comparison with the best rows by FD-digits (spectral error then not worse beyond noise); "
             "the goal itself is the table above.", "", *pds_goal_lines(rows, [base, edm], "fd_digits"), "",
             "### Best per budget", "", "| NFE | metric | " + f"best on {base} | best on {edm} |", "|---|---|---|---|"]
    for b in budgets:
        for metric, label in METRICS:
            picks = [best(rows, m, b, metric) for m in (base, edm)]
            lines.append(f"| {b} | {label} | " + " | ".join(
                "-" if p is None else f"`{p['sampler']}` {p[metric]:.4g}" for p in picks) + " |")
    lines += ["", "### Every row", "", f"| sampler | budget | NFE | {base} | {edm} |", "|---|---|---|---|---|"]
    for b in budgets:
        for name in names:
            a, e = cell.get((base, name, b)), cell.get((edm, name, b))
            if a is None and e is None:
                continue
            nfe = [r["nfe"] for r in (a, e) if r is not None]
            nfe_text = str(nfe[0]) if len(set(nfe)) == 1 else " / ".join(map(str, nfe))
            lines.append(f"| {name} | {b} | {nfe_text} | {figure(a)} | {figure(e)} |")
    floors = [m for m in (base, edm) if m in floor]
    if floors:
        lines += ["", "Floor (training images, same count): " + "; ".join(
            f"{m} {figure(floor[m])}" for m in floors) + "."]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a samplers_vs_nfe.json holding both models of a pair")
    args = parser.parse_args()
    payload = json.loads(args.results.read_text())
    rows = payload["results"]
    models = {r["model"] for r in rows}
    lines = ["# Recipes x samplers at equal NFE", "",
             "Generated by `python -m benchmarks.recipes_vs_nfe " + str(args.results) + "` from the rows of "
             "`benchmarks/samplers_vs_nfe.py` (how they were made: that file's docstring and "
             "`benchmarks/recipes_vs_nfe.sh`).", ""]
    for base, edm in PAIRS:
        if base in models and edm in models:
            lines += pair_lines(rows, payload["meta"].get("floor", {}), base, edm)
    out = args.results.with_name("recipes_vs_nfe.md")
    write_atomic(out, "\n".join(lines).encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
