"""Restart: Restart sampling (Xu et al. 2023), EDM Heun with K noisy restarts over [t_min, t_max] intervals."""

from __future__ import annotations

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import PDS
from pds_lightning.sampling.schedules import Karras, Schedule
from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.stochastic import (RESTART_INNER_STEPS, RESTART_INTERVALS, RESTART_REPEATS, restart,
                                               restart_nfe)


class Restart(SigmaSampler):
    """EDM Heun on the main levels; on reaching t_min of an interval, `repeats` (K) times: noise up to t_max and
    Heun back down over `inner_steps` (n) levels. `intervals`: [t_min, t_max] pairs in sigma (the paper's
    CIFAR-10 default [[0.06, 0.30]], for data in [-1, 1]); `repeats` / `inner_steps`: an int for every interval
    or a list, one per interval. NFE 2N - 1 + sum K 2 (n - 1). Other fields: SigmaSampler."""

    method = "restart"

    def __init__(self, levels: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None, pds: PDS | None = None,
                 intervals: list[list[float]] = [list(v) for v in RESTART_INTERVALS],
                 repeats: int | list[int] = RESTART_REPEATS, inner_steps: int | list[int] = RESTART_INNER_STEPS,
                 name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(levels, speed_up, eps, schedule, corrector, pds, name, guidance_scale, check_finite_every)
        if not isinstance(intervals, (list, tuple)) or not intervals:
            raise ValueError(f"{self.name}: intervals wants a list of [t_min, t_max] pairs, got {intervals!r}")
        for pair in intervals:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{self.name}: each interval is a [t_min, t_max] pair, got {pair!r}")
            check_number(self.name, "t_min", pair[0], low=0, low_open=True)
            check_number(self.name, "t_max", pair[1], low=pair[0], low_open=True, hint=" (t_min)")
        self.intervals = [[float(a), float(b)] for a, b in intervals]
        for field, value, low in (("repeats", repeats, 1), ("inner_steps", inner_steps, 2)):
            values = value if isinstance(value, (list, tuple)) else [value]
            if isinstance(value, (list, tuple)) and len(values) != len(intervals):
                raise ValueError(f"{self.name}: {field} wants an int or one int per interval ({len(intervals)}), "
                                 f"got {value!r}")
            for v in values:
                check_number(self.name, field, v, low=low, integer=True)
        self.repeats = list(repeats) if isinstance(repeats, (list, tuple)) else repeats
        self.inner_steps = list(inner_steps) if isinstance(inner_steps, (list, tuple)) else inner_steps

    def engine(self):
        return restart

    def levels_nfe(self, levels: int, ode_corrector: str, n_corrector_steps: int) -> int:
        return restart_nfe(levels, self.intervals, self.repeats, self.inner_steps, ode_corrector, n_corrector_steps)

    def extra_kwargs(self) -> dict:
        return dict(intervals=self.intervals, repeats=self.repeats, inner_steps=self.inner_steps)
