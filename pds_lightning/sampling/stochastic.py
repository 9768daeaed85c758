"""Stochastic few-step samplers in sigma-space: DPM-Solver++(2M) SDE and Restart sampling, for VE, VP, sub-VP.

Both use solvers.py's sigma-space frame (x_hat = x / s with marginal x0 + sigma n, the denoiser D, the noise
levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0, the optional PDS Langevin corrector after each main step) and
differ from its ODE solvers only in the fresh noise they inject, which contracts the errors an ODE accumulates.

NFE per sample with N = n_steps levels, plus n_corrector_steps * (N - 1) with `ode_corrector: langevin`:
dpmpp_2m_sde N; restart 2N - 1 + sum_i K_i 2 (n_i - 1) (EDM Heun backbone, K_i repeats of n_i - 1 Heun steps).
Noise comes from the `noise` source only (SeededNoise: a sample depends only on its seed and settings).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from pds_lightning.sampling.samplers import SampleResult
from pds_lightning.sampling.solvers import MIN_STEPS, _Run, heun_step, noise_levels
from pds_lightning.sde import SDE

#: Restart's CIFAR-10 setting (Xu et al. 2023, Table 3; sigma in [-1, 1] data units): one interval
#: [t_min, t_max] = [0.06, 0.30], K = 2 repeats of n = 3 inner levels, on an 18-level EDM Heun backbone.
RESTART_INTERVALS = ((0.06, 0.30),)
RESTART_REPEATS = 2
RESTART_INNER_STEPS = 3


def _corrector_nfe(n_steps: int, ode_corrector: str, n_corrector_steps: int) -> int:
    return n_corrector_steps * (n_steps - 1) if ode_corrector == "langevin" else 0


def dpmpp_2m_sde_nfe(n_steps: int, ode_corrector: str = "none", n_corrector_steps: int = 1) -> int:
    """Exact score evaluations per sample of dpmpp_2m_sde with `n_steps` noise levels: one per level."""
    return n_steps + _corrector_nfe(n_steps, ode_corrector, n_corrector_steps)


def restart_nfe(n_steps: int, intervals=RESTART_INTERVALS, repeats=RESTART_REPEATS, inner_steps=RESTART_INNER_STEPS,
                ode_corrector: str = "none", n_corrector_steps: int = 1) -> int:
    """Exact score evaluations per sample of restart: the Heun backbone's 2N - 1, plus 2 per inner Heun step."""
    ks = _per_interval(repeats, len(intervals), "repeats")
    ns = _per_interval(inner_steps, len(intervals), "inner_steps")
    restarts = sum(k * 2 * (n - 1) for k, n in zip(ks, ns))
    return 2 * n_steps - 1 + restarts + _corrector_nfe(n_steps, ode_corrector, n_corrector_steps)


@torch.no_grad()
def dpmpp_2m_sde(score_fn, sde: SDE, shape, *, noise, preconditioner=None, eta: float = 1.0, S_noise: float = 1.0,
                 **settings) -> SampleResult:
    """DPM-Solver++(2M) SDE (Lu et al. 2022), midpoint form, data prediction in lambda = -log sigma; N NFE.

    With h = log(sigma / sigma'), eta_h = eta h and the first-order weight w = -expm1(-h - eta_h):
    x' = (sigma'/sigma) e^(-eta_h) x + w D + [0.5 w (D - D_prev) / r] + S_noise sigma' sqrt(-expm1(-2 eta_h)) z,
    r = h_prev / h, the bracket from the second step on; the last step (to sigma = 0) is x' = D. eta = 0 is the
    deterministic DPM-Solver++(2M) exactly (no draws); eta = 1 matches the reverse SDE's noise. One draw per
    step to sigma' > 0 when eta > 0.
    """
    if not (math.isfinite(eta) and eta >= 0) or not (math.isfinite(S_noise) and S_noise >= 0):
        raise ValueError(f"dpmpp_2m_sde needs eta >= 0 and S_noise >= 0 (eta 1: the reverse SDE, 0: the ODE), "
                         f"got eta={eta}, S_noise={S_noise}")
    run = _Run(score_fn, sde, shape, noise, preconditioner, **settings)
    x, previous = run.x, None  # previous: (D, h) of the last step
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            eta_h = eta * h
            w = -math.expm1(-h - eta_h)
            x = (sigma_next / sigma) * math.exp(-eta_h) * x + w * denoised
            if previous is not None:
                x = x + (0.5 * w * h / previous[1]) * (denoised - previous[0])
            if eta > 0:
                x = x + (S_noise * sigma_next * math.sqrt(-math.expm1(-2 * eta_h))) * noise.noise(x)
            previous = (denoised, h)
        x = run.after_step(x, i, sigma_next)
    return run.result(x)


def _per_interval(value, n_intervals: int, name: str) -> list[int]:
    """An int for every interval, or one per interval, as a list of ints."""
    if isinstance(value, int):
        value = [value] * n_intervals
    values = list(value) if isinstance(value, (list, tuple)) else []
    if len(values) != n_intervals or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"restart {name} wants an int or one int per interval ({n_intervals}), got {value!r}")
    return values


def restart_plan(sigmas: Sequence[float], intervals, repeats, inner_steps) -> dict[int, tuple[int, float, float, int]]:
    """{main level index j: (K, t_min, t_max, n)}: after the step landing on sigma_j = t_min, K restarts to t_max.

    As in the paper's code, each t_min snaps to the nearest main level (which must be positive, and not sigma_0);
    t_max stays as given, above it and at most sigma_0.
    """
    intervals = [tuple(v) for v in intervals]
    if not intervals or not all(len(v) == 2 for v in intervals):
        raise ValueError(f"restart intervals want a non-empty list of [t_min, t_max] pairs, got {intervals!r}")
    ks = _per_interval(repeats, len(intervals), "repeats")
    ns = _per_interval(inner_steps, len(intervals), "inner_steps")
    levels = torch.tensor(sigmas, dtype=torch.float64)
    plan = {}
    for (t_min, t_max), k, n in zip(intervals, ks, ns):
        if k < 1:
            raise ValueError(f"restart repeats must be >= 1 per interval, got {k}; drop the interval instead")
        if n < MIN_STEPS:
            raise ValueError(f"restart inner_steps must be >= {MIN_STEPS} levels (one Heun step), got {n}")
        j = int(torch.argmin((levels - float(t_min)).abs()))
        where = f"restart interval [{t_min}, {t_max}]"
        if not 0 < j < len(sigmas) - 1:
            raise ValueError(f"{where}: t_min must lie between the run's sigma_min {sigmas[-2]:g} and sigma_max "
                             f"{sigmas[0]:g} (it snaps to the nearest noise level, here {sigmas[j]:g})")
        if not sigmas[j] < float(t_max) <= sigmas[0]:
            raise ValueError(f"{where}: need t_min (snapped to the level {sigmas[j]:g}) < t_max <= sigma_max "
                             f"{sigmas[0]:g}")
        if j in plan:
            raise ValueError(f"{where}: t_min snaps to the noise level {sigmas[j]:g} as another interval does; "
                             "merge them or raise n_steps")
        plan[j] = (k, sigmas[j], float(t_max), n)
    return plan


@torch.no_grad()
def restart(score_fn, sde: SDE, shape, *, noise, preconditioner=None, intervals=RESTART_INTERVALS,
            repeats=RESTART_REPEATS, inner_steps=RESTART_INNER_STEPS, **settings) -> SampleResult:
    """Restart sampling (Xu et al. 2023): EDM Heun on the main levels; on reaching t_min of an interval, K times:
    jump to t_max by fresh noise, x += sqrt(t_max^2 - t_min^2) z, and run Heun back down over n Karras levels
    (the run's rho) from t_max to t_min. `intervals`: [t_min, t_max] pairs in sigma; `repeats` (K) and
    `inner_steps` (n): an int for all or one per interval. One draw per restart; NFE in `restart_nfe`.
    """
    run = _Run(score_fn, sde, shape, noise, preconditioner, **settings)
    plan = restart_plan(run.sigmas, intervals, repeats, inner_steps)
    rho = settings.get("rho", 7.0)
    x = run.x
    for i, sigma, sigma_next in run.steps():
        x = run.after_step(heun_step(run.denoise, x, sigma, sigma_next), i, sigma_next)
        if i + 1 in plan:
            k, t_min, t_max, n = plan[i + 1]
            inner = noise_levels(sde, n, 0.0, "karras", rho, sigma_min=t_min, sigma_max=t_max)[:-1].tolist()
            inner[-1] = t_min  # land exactly on the main level, whatever the float rounding of the ramp
            for _ in range(k):
                x = x + math.sqrt(t_max ** 2 - t_min ** 2) * noise.noise(x)
                for a, b in zip(inner[:-1], inner[1:]):
                    x = heun_step(run.denoise, x, a, b)
    return run.result(x)


STOCHASTIC_SOLVERS = {"dpmpp_2m_sde": dpmpp_2m_sde, "restart": restart}
