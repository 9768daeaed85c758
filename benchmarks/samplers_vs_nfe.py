"""Sample quality against NFE: PC samplers (vanilla, PDS) against EDM / DPM-Solver++ / Euler samplers.

    python -m benchmarks.samplers_vs_nfe --models gaussian                          # 64 px Gaussian target, exact
    python -m benchmarks.samplers_vs_nfe --models demo patches --num-samples 1000   # trained reference models
    bash benchmarks/recipes_vs_nfe.sh demo_edm 256 /tmp/r_demo_edm                  # score_sde vs EDM recipe rows

On several cores, split the rows over processes (`--samplers ... --output-dir /tmp/a`, the rest to /tmp/b),
then `--merge /tmp/a/samplers_vs_nfe.json /tmp/b/samplers_vs_nfe.json` joins them into the results;
benchmarks/recipes_vs_nfe.py sets the two recipes side by side (issue 25's goal).

Rows (sampler components; the step count per NFE budget is the one whose exact `.nfe(sde)` is closest, and
printed; the older rows are the components the flat settings they were first measured with translate to, so
their figures reproduce): vanilla PC, PDS PC (alpha 5; alpha chosen by the Surrogate; by the Pilot), the SDE-grid
Heun ODE (ProbabilityFlowODE, 2N + 1 NFE with its noise-free last step), EDM Heun with the Karras schedule (2N - 1),
EDM stochastic (S_churn 40, S_tmin 0.05, S_tmax 50, S_noise 1.003: EDM's ImageNet-64 values; 2N - 1),
DPM-Solver++(2M) (N), Euler/DDIM (N), EDM Heun + the PDS Langevin corrector (alpha 5, 3N - 2), PDS PC with
the consistent predictor (`PDS(predictor='consistent')`), DPM-Solver++(2M) SDE (eta 1; N) and Restart (EDM Heun
with restarts, 2N - 1 + 2 K (n - 1) per interval) on the interval [[0.03, 0.15]] in sigma with K = 2 repeats
of n = 3 inner levels: the data here are in [0, 1], so the paper's CIFAR-10 interval [0.06, 0.30] for [-1, 1]
data is halved. Restart's fewest NFE are 11 (2 levels), which it gets at a budget of 10. PC samplers: 2 NFE
per step. Issue 33's rows (docs/pds_stochastic.md): DPM-Solver++(2M) SDE with PDS-shaped noise (frequency filter,
alpha 5, and alpha by the surrogate, which may choose vanilla; N NFE) and PDS PC with a skew-symmetric term in
its Langevin corrector (PairedRotation 0.5; 2 NFE per step), and DPM-Solver++(2M) SDE whose noise goes to the
Fourier modes the data has not yet resolved (`UnresolvedBands()`: scale 4, sharpness 4; N NFE). On the Gaussian
target the DPM-Solver++(2M) SDE rows
are exact by impulse responses (a frequency-only M keeps them circulant), Restart and the skew row Monte Carlo.

`gaussian`: an exact-score stationary Gaussian at 64x64 (`GaussianScore`) whose mean and power spectrum are
those of the embedded MNIST digits resized to 64 px, under the demo model's SDE (VE, sigma 0.01..16).
Quality is W2 per pixel of the output law against the target:
- exact for the samplers that are affine in their draws (all ODE/EDM rows without a corrector): the law is
  read off impulse responses (row j + 1 of a batch gets a unit impulse in draw j), per Fourier mode;
- for the PC rows, the library's moment recursion (`pds_lightning.alpha.predict_w2`: exact per mode except
  that the Langevin step uses expected norms);
- for every row also a Monte-Carlo estimate from --num-samples samples (per-mode sample variances; its
  floor, the same estimate on exact target draws, is printed), the only figure for rows with a corrector.
Trained models (`demo`, `patches` and their EDM-recipe twins `demo_edm`, `patches_edm`): spectral error and
FD-digits with bootstrap standard errors, exactly as benchmarks/steps_vs_quality.py (loading and scoring from
benchmarks/common.py). Results accumulate in results/samplers_vs_nfe.json (rows already there with the same
sample count are skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from benchmarks.common import (MODELS, ROOT, Scorer, alpha_text, image_stack, load_model, markdown_table, pyplot,
                               save_figure, training_images)

from pds_lightning.alpha import Pilot, Surrogate, resolve_alpha
from pds_lightning.fileio import write_atomic
from pds_lightning.sampling import (PC, PDS, DPMSolverPP2M, DPMSolverPP2MSDE, EDMHeun, EDMStochastic, Euler, Langevin,
                                    ProbabilityFlowODE, RecordedNoise, Restart, Sampler, UnresolvedBands, generate)
from pds_lightning.sampling.skew import PairedRotation

NFE = (10, 20, 40, 80, 132, 200)
EDM_CHURN = dict(S_churn=40.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.003)
GAUSSIAN_SIZE = 64


# ---- rows ------------------------------------------------------------------------------------------
#: Restart's interval in sigma for data in [0, 1] (the paper's [0.06, 0.30] for [-1, 1] data, halved).
RESTART = dict(intervals=[[0.03, 0.15]], repeats=2, inner_steps=3)


def rows() -> dict[str, Sampler]:
    """name -> sampler component without a step count (the model's default one)."""
    both = lambda alpha, **kw: PDS(filters="both", alpha=alpha, **kw)
    make = {"vanilla": lambda name: PC(name=name), "pds_a5": lambda name: PC(pds=both(5.0), name=name),
            "pds_auto": lambda name: PC(pds=both(Surrogate()), name=name),
            "pds_pilot": lambda name: PC(pds=both(Pilot()), name=name),
            "pds_consistent": lambda name: PC(pds=both(5.0, predictor="consistent"), name=name),
            "heun_sde_grid": lambda name: ProbabilityFlowODE(name=name), "edm_heun": lambda name: EDMHeun(name=name),
            "edm_stochastic": lambda name: EDMStochastic(**EDM_CHURN, name=name),
            "dpmpp_2m": lambda name: DPMSolverPP2M(name=name), "euler": lambda name: Euler(name=name),
            "edm_heun_pds_corrector": lambda name: EDMHeun(corrector=Langevin(snr=0.16), pds=both(5.0), name=name),
            "dpmpp_2m_sde": lambda name: DPMSolverPP2MSDE(eta=1.0, name=name),
            "restart": lambda name: Restart(**RESTART, name=name),
            "dpmpp_2m_sde_pds": lambda name: DPMSolverPP2MSDE(eta=1.0, pds=PDS(filters="freq", alpha=5.0), name=name),
            "dpmpp_2m_sde_pds_auto": lambda name: DPMSolverPP2MSDE(eta=1.0, pds=PDS(filters="freq", alpha=Surrogate()),
                                                                   name=name),
            "pds_skew": lambda name: PC(corrector=Langevin(skew=PairedRotation(0.5)), pds=both(5.0), name=name),
            "dpmpp_2m_sde_bands": lambda name: DPMSolverPP2MSDE(eta=1.0, pds=UnresolvedBands(), name=name)}
    return {name: build(name) for name, build in make.items()}


def with_steps(sampler: Sampler, n: int) -> Sampler:
    """`sampler` with n steps (PC, ODE) or noise levels (sigma-space samplers)."""
    return sampler.replace(steps=n)


def steps_for_budget(nfe_of, budget: int) -> int:
    """The n_steps whose NFE is closest to `budget` (fewer NFE on ties); `nfe_of(n)` is the exact NFE."""
    return min(range(2, budget + 2), key=lambda n: (abs(nfe_of(n) - budget), nfe_of(n)))


# ---- the 64 px Gaussian target -------------------------------------------------------------------
class GaussianTarget:
    """Exact-score Gaussian with the embedded MNIST digits' mean and power spectrum at 64 px."""

    def __init__(self, size: int = GAUSSIAN_SIZE):
        import numpy as np

        from pds_lightning.data import embedded_data_dir
        from pds_lightning.models.gaussian import GaussianScore
        from pds_lightning.sde import VESDE
        from pds_lightning.statistics import ImageStatistics

        images = torch.from_numpy(np.load(embedded_data_dir() / "mnist_32.npz")["images"]).double() / 255
        x = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                            align_corners=False)
        self.mean = float(x.mean())
        lam = (torch.fft.fft2(x - self.mean).abs() ** 2).mean(0) / (size * size)  # [1, H, W], lam(k) = lam(-k)
        self.lam = lam.clamp(min=1e-8 * float(lam.max()))
        self.sde = VESDE(0.01, 16.0, 1000)
        self.score = GaussianScore(self.mean, self.lam, self.sde)
        self.shape = (1, size, size)
        mean_img = torch.full((1, size, size), self.mean, dtype=torch.float64)
        power = size * size * self.lam + torch.fft.fft2(mean_img).abs() ** 2
        self.statistics = ImageStatistics.from_moments(len(x), power, mean_img, self.lam.mean() + mean_img ** 2)

    def w2(self, mean: torch.Tensor, v: torch.Tensor) -> float:
        """W2 per pixel of N(mean image, per-mode variances v) against the target (circulant covariances)."""
        H, W = self.shape[1:]
        target = torch.full_like(mean, self.mean)
        sq = (mean - target).pow(2).sum() + (v.sqrt() - self.lam[0].sqrt()).pow(2).sum()
        return math.sqrt(float(sq) / (H * W))

    def mc_w2(self, x: torch.Tensor) -> float:
        """W2 per pixel from sample moments per Fourier mode, x [n, 1, H, W]."""
        x = x[:, 0].double()
        H, W = x.shape[-2:]
        v = (torch.fft.fft2(x - x.mean(0)).abs() ** 2).mean(0) / (H * W)
        return self.w2(x.mean(0), v)

    def impulse_w2(self, sampler: Sampler, draws: int) -> float:
        """Exact W2 of a sampler affine in its `draws` standard-normal draws, from impulse responses."""
        H, W = self.shape[1:]
        stream = [torch.zeros(draws + 1, 1, H, W, dtype=torch.float64) for _ in range(draws)]
        for j in range(draws):
            stream[j][j + 1, 0, 0, 0] = 1.0
        M = None if sampler.pds is None else sampler.pds.preconditioner(self.statistics)  # frequency-only here
        x = float64_run(sampler, self.score, self.sde, (draws + 1, 1, H, W), RecordedNoise(stream), M).x[:, 0]
        return self.w2(x[0], (torch.fft.fft2(x[1:] - x[0]).abs() ** 2).sum(0))


def float64_run(sampler: Sampler, score_fn, sde, shape, noise, preconditioner=None):
    """An ODE or corrector-free sigma-space sampler run in float64 (the impulse responses need the precision)."""
    return sampler(score_fn, sde, shape, noise=noise, preconditioner=preconditioner, dtype=torch.float64)


def exact_w2(target: GaussianTarget, name: str, sampler: Sampler) -> tuple[float | None, str]:
    """(exact W2 per pixel, how) where it is available; Restart, PDS consistent and the skew row: Monte Carlo only."""
    from pds_lightning.alpha import predict_w2

    # the recursion knows the official predictor only, and no skew (it couples modes)
    if isinstance(sampler, PC) and name not in ("pds_consistent", "pds_skew"):
        candidate = None if sampler.pds is None else sampler.pds.alpha
        pds = PC(steps=sampler.steps, pds=PDS(filters="both", alpha=5.0))
        return float(predict_w2(target.statistics, target.sde, pds, [candidate])[0]), "moments"
    if name in ("heun_sde_grid", "edm_heun", "dpmpp_2m", "euler"):
        return target.impulse_w2(sampler, 1), "impulse"
    if name == "edm_stochastic":
        return target.impulse_w2(sampler, 1 + sampler.steps_on(target.sde)[0]), "impulse"
    if name.startswith("dpmpp_2m_sde"):  # the initial draw and one per step to sigma > 0
        return target.impulse_w2(sampler, sampler.steps_on(target.sde)[0]), "impulse"
    return None, "mc only"


def run_gaussian(args, payload: dict, path: Path) -> None:
    target = GaussianTarget()
    seeds = list(range(args.num_samples))
    floor = target.mc_w2(target.score.sample(args.num_samples, torch.Generator().manual_seed(0))[:, :1].float())
    payload["meta"].setdefault("floor", {})["gaussian"] = {"w2_mc": floor}
    for budget in sorted(args.nfe):
        for name, sampler in rows().items():
            if name not in args.samplers or done(payload, "gaussian", name, budget, args.num_samples):
                continue
            setting, n_steps = for_budget(sampler, target.sde, budget)
            start = time.perf_counter()
            resolved, choice = resolve_alpha(setting, target.sde, target.statistics, score_fn=target.score,
                                             shape=target.shape)
            result = generate(resolved, target.score, target.sde, seeds, target.shape, statistics=target.statistics)
            wall = (time.perf_counter() - start) / len(seeds)
            if choice is not None:
                result.info["alpha_auto"] = choice
            exact, how = exact_w2(target, name, resolved)
            row = {"model": "gaussian", "sampler": name, "budget": budget, "nfe": result.nfe,
                   "n_steps": n_steps, "num_samples": args.num_samples, "wall_s_per_sample": wall,
                   "w2_exact": exact, "w2_exact_how": how, "w2_mc": target.mc_w2(result.x)}
            if "alpha_auto" in result.info:
                row["alpha"] = result.info["alpha_auto"]["alpha"]
            save_row(payload, row, path)


def run_trained(name: str, args, payload: dict, path: Path, features) -> None:
    model, dm = load_model(*MODELS[name])
    model.to(args.device)
    scorer = Scorer(image_stack(dm, dm.val_indices), features)
    payload["meta"].setdefault("floor", {})[name] = scorer.score(training_images(dm, args.num_samples))
    seeds = torch.arange(args.num_samples)
    for budget in sorted(args.nfe):
        for sampler, component in rows().items():
            if sampler not in args.samplers or done(payload, name, sampler, budget, args.num_samples):
                continue
            setting, n_steps = for_budget(component, model.sde, budget)
            start = time.perf_counter()
            images, info, nfe = [], {}, 0
            for batch in seeds.split(args.batch_size):
                result = model.sample(setting, batch.to(args.device))
                images.append(result.x.cpu())
                nfe, info = result.nfe, result.info
            wall = (time.perf_counter() - start) / args.num_samples
            row = {"model": name, "sampler": sampler, "budget": budget, "nfe": nfe, "n_steps": n_steps,
                   "num_samples": args.num_samples, "wall_s_per_sample": wall, **scorer.score(torch.cat(images))}
            if "alpha_auto" in info:
                row["alpha"] = info["alpha_auto"]["alpha"]
            save_row(payload, row, path)


def for_budget(sampler: Sampler, sde, budget: int) -> tuple[Sampler, int]:
    """(the sampler with the step count whose exact NFE on `sde` is closest to `budget`, that count)."""
    n = steps_for_budget(lambda k: with_steps(sampler, k).nfe(sde), budget)
    return with_steps(sampler, n), n


def done(payload, model, sampler, budget, n) -> bool:
    return any((r["model"], r["sampler"], r["budget"], r["num_samples"]) == (model, sampler, budget, n)
               for r in payload["results"])


def save_row(payload: dict, row: dict, path: Path) -> None:
    payload["results"].append(row)
    write_atomic(path, json.dumps(payload, indent=1).encode())
    figures = {k: v for k, v in row.items() if k in ("w2_exact", "w2_mc", "spectral_error", "fd_digits")}
    print(f"{row['model']} {row['sampler']} budget {row['budget']}: NFE {row['nfe']} (n_steps {row['n_steps']}), "
          + ", ".join(f"{k} {v:.4g}" if v is not None else f"{k} n/a" for k, v in figures.items())
          + f", {row['wall_s_per_sample'] * 1e3:.1f} ms/sample", flush=True)


# ---- report ----------------------------------------------------------------------------------------
METRICS = {"gaussian": (("w2_exact", "W2 per pixel, exact"), ("w2_mc", "W2 per pixel, Monte Carlo")),
           "trained": (("spectral_error", "spectral error (decades)"), ("fd_digits", "FD-digits"))}


def cell(r: dict, metric: str, best: float | None) -> str:
    value = r.get(metric)
    if value is None:
        return f"n/a ({r['nfe']})"
    se = r.get(metric + "_se")
    text = f"{value:.4f}" + (f" ± {se:.4f}" if se is not None else "")
    text = f"**{text}**" if best is not None and value == best else text
    return f"{text} ({r['nfe']})"


def nfe_heading(budget: int) -> str:
    return f"{budget} NFE"


def as_list(commands: str | list[str]) -> list[str]:
    """A model's commands (older results files hold one string)."""
    return [commands] if isinstance(commands, str) else commands


def add_commands(meta: dict, model: str, new: list[str]) -> None:
    """Record the commands that made `model`'s rows: one per budget set or per --samplers split, each once."""
    commands = meta.setdefault("commands", {})
    commands[model] = list(dict.fromkeys([*as_list(commands.get(model, [])), *new]))


def write_report(path: Path, payload: dict) -> None:
    results, meta = payload["results"], payload["meta"]
    lines = ["# Samplers against NFE: PC (vanilla, PDS) vs EDM, DPM-Solver++ and Euler", "",
             "Method: the script's docstring; each section names the command that made its rows. Cells: value "
             "(exact NFE per sample); lower is better; **bold** = best of the column. Wall time: ms per sample on "
             "this machine (1 CPU thread per process).", ""]
    for model in dict.fromkeys(r["model"] for r in results):
        rows_m = [r for r in results if r["model"] == model]
        budgets = sorted({r["budget"] for r in rows_m})
        names = list(dict.fromkeys(r["sampler"] for r in rows_m))
        row_of = {}
        for r in rows_m:
            row_of.setdefault((r["sampler"], r["budget"]), r)  # the first row of each cell
        n = rows_m[0]["num_samples"]
        lines += [f"## {model} ({n} samples per row)", ""]
        if model in meta.get("commands", {}):
            lines += ["Generated by " + "; ".join(f"`{c}`" for c in as_list(meta["commands"][model])) + ".", ""]
        if model == "gaussian":
            lines += [f"64x64 Gaussian with the embedded MNIST digits' mean and power spectrum, VE sigma 0.01..16. "
                      f"'exact': impulse responses (affine samplers) or the PC moment recursion (PC rows, expected "
                      f"Langevin norms). Monte-Carlo floor (exact target draws, same n): "
                      f"{meta['floor']['gaussian']['w2_mc']:.4f}.", ""]
        for metric, label in METRICS["gaussian" if model == "gaussian" else "trained"]:
            best = {b: min((r[metric] for r in rows_m if r["budget"] == b and r.get(metric) is not None),
                           default=None) for b in budgets}
            lines += [f"### {label}", ""] + markdown_table(
                names, budgets, nfe_heading,
                lambda name, b: cell(row_of[name, b], metric, best[b]) if (name, b) in row_of else "")
            if model != "gaussian" and model in meta.get("floor", {}):
                f = meta["floor"][model]
                lines.append(f"| *floor* | {f[metric]:.4f} ± {f[metric + '_se']:.4f} (training images) |")
            lines.append("")
        lines += ["### wall time (ms per sample)", ""] + markdown_table(
            names, budgets, nfe_heading,
            lambda name, b: f"{row_of[name, b]['wall_s_per_sample'] * 1e3:.1f}" if (name, b) in row_of else "")
        chosen = [(r["sampler"], r["budget"], r["alpha"]) for r in rows_m if "alpha" in r]
        if chosen:
            lines += ["", "alpha: auto resolved to: " + ", ".join(
                f"{s} {alpha_text(a)} at {b} NFE" for s, b, a in chosen) + "."]
        lines.append("")
    if meta.get("plot"):
        lines += [f"![quality against NFE]({meta['plot']})", ""]
    write_atomic(path, "\n".join(lines).encode())


def write_plot(path: Path, payload: dict) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    results = payload["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(len(models), 1, figsize=(7, 4 * len(models)), squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        metric = "w2_exact" if model == "gaussian" else "spectral_error"
        for k, name in enumerate(dict.fromkeys(r["sampler"] for r in results if r["model"] == model)):
            pts = sorted((r["nfe"], r.get(metric) if r.get(metric) is not None else r.get("w2_mc"))
                         for r in results if r["model"] == model and r["sampler"] == name)
            # PC rows solid, sigma-space solvers dashed: 11 rows need more than colour to tell apart.
            style = "-" if name.startswith(("vanilla", "pds")) else "--"
            ax.plot(*zip(*pts), marker="o", linestyle=style, color=plt.cm.tab20(k % 20), label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE per sample")
        ax.set_title(f"{model}: {metric} (Monte Carlo where no exact figure)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def main() -> None:
    all_rows = list(rows())
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gaussian", *MODELS], choices=["gaussian", *MODELS])
    parser.add_argument("--nfe", nargs="+", type=int, default=list(NFE))
    parser.add_argument("--samplers", nargs="+", default=all_rows, choices=all_rows)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="samplers_vs_nfe",
                        help="file name of the results (NAME.json, NAME.md, NAME.png in --output-dir)")
    parser.add_argument("--merge", nargs="+", type=Path, default=[],
                        help="samplers_vs_nfe.json files of runs split over processes (--samplers, --output-dir): "
                             "their rows join the output's json and the report is rewritten; nothing is sampled")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.name}.json"
    payload = json.loads(path.read_text()) if path.is_file() else {"meta": {}, "results": []}
    if args.merge:
        merge(payload, args.merge)
        finish(out, path, payload, args.name)
        return
    payload["meta"].update(torch=torch.__version__, threads=args.threads)
    command = ("python -m benchmarks.samplers_vs_nfe --models " + " ".join(args.models) + f" --num-samples "
               f"{args.num_samples} --nfe " + " ".join(map(str, sorted(args.nfe)))
               + ("" if args.samplers == all_rows else " --samplers " + " ".join(args.samplers))
               + ("" if args.name == "samplers_vs_nfe" else f" --name {args.name}"))
    for model in args.models:
        add_commands(payload["meta"], model, [command])
    if "gaussian" in args.models:
        run_gaussian(args, payload, path)
    trained = [m for m in args.models if m != "gaussian"]
    if trained:
        from pds_lightning.features import DigitFeatures

        features = DigitFeatures()
        for name in trained:
            run_trained(name, args, payload, path, features)
    finish(out, path, payload, args.name)


def merge(payload: dict, paths: list[Path]) -> None:
    """Rows (and their models' floors and commands) of other runs' json files that this payload lacks."""
    for other in (json.loads(p.read_text()) for p in paths):
        for r in other["results"]:
            if not done(payload, r["model"], r["sampler"], r["budget"], r["num_samples"]):
                payload["results"].append(r)
        payload["meta"].setdefault("floor", {}).update(other["meta"].get("floor", {}))
        for model, theirs in other["meta"].get("commands", {}).items():  # runs split by --samplers: keep both
            add_commands(payload["meta"], model, as_list(theirs))


def finish(out: Path, path: Path, payload: dict, name: str = "samplers_vs_nfe") -> None:
    if write_plot(out / f"{name}.png", payload):
        payload["meta"]["plot"] = f"{name}.png"
    write_atomic(path, json.dumps(payload, indent=1).encode())
    write_report(out / f"{name}.md", payload)
    print(f"wrote {out / f'{name}.md'}")


if __name__ == "__main__":
    main()
