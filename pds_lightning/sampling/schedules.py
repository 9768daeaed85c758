"""Noise-level schedules of the sigma-space samplers (k-diffusion style: the sampler is given the sigmas)."""

from __future__ import annotations

import torch
from torch import Tensor

from pds_lightning.sampling.base import Component, check_number
from pds_lightning.sde import SDE, resolve_steps

MIN_STEPS = 2  # one noise level is only D(sigma_max z; sigma_max), the data mean: not a sampler


class Schedule(Component):
    """`sigmas(sde, n, eps)`: sigma_0 > ... > sigma_{n-1} > sigma_n = 0, [n + 1] float64 on the CPU, for n levels
    of an SDE sampled down to time eps (None: the end time a sampler with `steps` n has, `resolve_steps`)."""

    #: Whether the end time eps sets the levels (False when the schedule fixes its own sigma_min).
    reads_eps = True

    def sigmas(self, sde: SDE, n: int, eps: float | None = None) -> Tensor:
        check_levels(n)
        eps = resolve_steps(sde.N, sde.default_eps, steps=n)[1] if eps is None else eps
        levels = self.levels(sde, n, eps)
        return torch.cat([levels, levels.new_zeros(1)])

    def levels(self, sde: SDE, n: int, eps: float) -> Tensor:
        """The n levels above 0, float64."""
        raise NotImplementedError


def check_levels(n: int) -> None:
    if n < MIN_STEPS:
        raise ValueError(f"these samplers need >= {MIN_STEPS} noise levels, got {n}; "
                         "raise steps (or lower speed_up)")


class Karras(Schedule):
    """EDM's schedule, (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho; sigma_min /
    sigma_max default to sigma(eps) / sigma(T) of the SDE."""

    def __init__(self, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None):
        check_number("Karras", "rho", rho, low=0, low_open=True, hint=" (EDM default 7)")
        for key, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
            if value is not None:
                check_number("Karras", key, value, low=0, low_open=True, hint=" or None (from the SDE)")
        if sigma_min is not None and sigma_max is not None and sigma_min >= sigma_max:
            raise ValueError(f"Karras: need sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.rho = float(rho)
        self.sigma_min = None if sigma_min is None else float(sigma_min)
        self.sigma_max = None if sigma_max is None else float(sigma_max)

    @property
    def reads_eps(self) -> bool:
        return self.sigma_min is None

    def levels(self, sde, n, eps):
        lo = float(sde.sigma_of_t(torch.tensor(eps, dtype=torch.float64))) if self.sigma_min is None else self.sigma_min
        hi = float(sde.sigma_of_t(torch.tensor(sde.T, dtype=torch.float64))) if self.sigma_max is None else self.sigma_max
        return self.ramp(n, lo, hi)

    def ramp(self, n: int, lo: float, hi: float) -> Tensor:
        """n levels from hi down to lo, float64 (also Restart's levels inside a restart interval)."""
        if not 0 < lo < hi:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {lo:g} and {hi:g}")
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        return (hi ** (1 / self.rho) + ramp * (lo ** (1 / self.rho) - hi ** (1 / self.rho))) ** self.rho


class SDEGrid(Schedule):
    """sigma(t_i) on the SDE's own time grid linspace(T, eps, N)."""

    def __init__(self):
        pass

    def levels(self, sde, n, eps):
        return sde.sigma_of_t(sde.time_grid(n, eps).double())
