"""Restart: Restart sampling (Xu et al. 2023), EDM Heun with K noisy restarts over [t_min, t_max] intervals."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import Preconditioning
from pds_lightning.sampling.schedules import MIN_STEPS, Karras, Schedule
from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.solvers import heun_step

#: Restart's CIFAR-10 setting (Xu et al. 2023, Table 3; sigma in [-1, 1] data units): one interval
#: [t_min, t_max] = [0.06, 0.30], K = 2 repeats of n = 3 inner levels, on an 18-level EDM Heun backbone.
RESTART_INTERVALS = ((0.06, 0.30),)
RESTART_REPEATS = 2
RESTART_INNER_STEPS = 3


class Restart(SigmaSampler):
    """EDM Heun on the main levels; on reaching t_min of an interval, `repeats` (K) times: noise up to t_max,
    x += sqrt(t_max^2 - t_min^2) z, and Heun back down over `inner_steps` (n) Karras levels (the schedule's rho)
    from t_max to t_min. `intervals`: [t_min, t_max] pairs in sigma (the paper's CIFAR-10 default
    [[0.06, 0.30]], for data in [-1, 1]); `repeats` / `inner_steps`: an int for every interval or a list, one per
    interval. One draw per restart. NFE 2N - 1 + sum K 2 (n - 1). Other fields: SigmaSampler."""

    isotropic_jump = "restart jump"

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None, pds: Preconditioning | None = None,
                 intervals: list[list[float]] = [list(v) for v in RESTART_INTERVALS],
                 repeats: int | list[int] = RESTART_REPEATS, inner_steps: int | list[int] = RESTART_INNER_STEPS,
                 name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(steps, speed_up, eps, schedule, corrector, pds, name, guidance_scale, check_finite_every)
        if not isinstance(schedule, Karras):
            raise ValueError(f"{self.name}: Restart runs its restarts over Karras levels with the schedule's rho; "
                             f"{type(schedule).__name__} has no rho; use schedule: Karras")
        if not isinstance(intervals, (list, tuple)) or not intervals:
            raise ValueError(f"{self.name}: intervals wants a list of [t_min, t_max] pairs, got {intervals!r}")
        for pair in intervals:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{self.name}: each interval is a [t_min, t_max] pair, got {pair!r}")
            check_number(self.name, "t_min", pair[0], low=0, low_open=True)
            check_number(self.name, "t_max", pair[1], low=pair[0], low_open=True, hint=" (t_min)")
        self.intervals = [[float(a), float(b)] for a, b in intervals]
        for field, value, low in (("repeats", repeats, 1), ("inner_steps", inner_steps, MIN_STEPS)):
            values = value if isinstance(value, (list, tuple)) else [value]
            if isinstance(value, (list, tuple)) and len(values) != len(intervals):
                raise ValueError(f"{self.name}: {field} wants an int or one int per interval ({len(intervals)}), "
                                 f"got {value!r}")
            for v in values:
                check_number(self.name, field, v, low=low, integer=True)
        self.repeats = list(repeats) if isinstance(repeats, (list, tuple)) else repeats
        self.inner_steps = list(inner_steps) if isinstance(inner_steps, (list, tuple)) else inner_steps

    def per_interval(self) -> list[tuple[list[float], int, int]]:
        """([t_min, t_max], K, n) of each interval."""
        count = len(self.intervals)
        ks = self.repeats if isinstance(self.repeats, list) else [self.repeats] * count
        ns = self.inner_steps if isinstance(self.inner_steps, list) else [self.inner_steps] * count
        return list(zip(self.intervals, ks, ns))

    def score_calls(self, n):
        return 2 * n - 1 + sum(k * 2 * (inner - 1) for _, k, inner in self.per_interval())

    def plan(self, sigmas: Sequence[float]) -> dict[int, tuple[int, float, float, list[float]]]:
        """{main level index j: (K, t_min, t_max, inner levels)}: after the step landing on sigma_j = t_min, K
        restarts to t_max. As in the paper's code, each t_min snaps to the nearest main level (which must be
        positive, and not sigma_0); t_max stays as given, above it and at most sigma_0."""
        levels = torch.tensor(sigmas, dtype=torch.float64)
        plan = {}
        for (t_min, t_max), k, n in self.per_interval():
            j = int(torch.argmin((levels - t_min).abs()))
            where = f"{self.name}: restart interval [{t_min}, {t_max}]"
            if not 0 < j < len(sigmas) - 1:
                raise ValueError(f"{where}: t_min must lie between the run's sigma_min {sigmas[-2]:g} and sigma_max "
                                 f"{sigmas[0]:g} (it snaps to the nearest noise level, here {sigmas[j]:g})")
            if not sigmas[j] < t_max <= sigmas[0]:
                raise ValueError(f"{where}: need t_min (snapped to the level {sigmas[j]:g}) < t_max <= sigma_max "
                                 f"{sigmas[0]:g}")
            if j in plan:
                raise ValueError(f"{where}: t_min snaps to the noise level {sigmas[j]:g} as another interval does; "
                                 "merge them or raise steps")
            inner = self.schedule.ramp(n, sigmas[j], t_max).tolist()
            inner[-1] = sigmas[j]  # land exactly on the main level, whatever the float rounding of the ramp
            plan[j] = (k, sigmas[j], t_max, inner)
        return plan

    def start(self, run):
        run.memory["restart"] = self.plan(run.sigmas)

    def step(self, run, x, sigma, sigma_next):
        return heun_step(run.denoise, x, sigma, sigma_next)

    def after_level(self, run, x, level):
        if level not in run.memory["restart"]:
            return x
        k, t_min, t_max, inner = run.memory["restart"][level]
        for _ in range(k):
            x = x + math.sqrt(t_max ** 2 - t_min ** 2) * run.noise.noise(x)
            for a, b in zip(inner[:-1], inner[1:]):
                x = heun_step(run.denoise, x, a, b)
        return x
