"""Noise-level schedules of the sigma-space samplers (k-diffusion style: the sampler is given the sigmas)."""

from __future__ import annotations

from torch import Tensor

from pds_lightning.sampling.base import Component, check_number
from pds_lightning.sampling.solvers import noise_levels
from pds_lightning.sde import SDE


class Schedule(Component):
    """sigma_0 > ... > sigma_{N-1} > sigma_N = 0 for N levels of an SDE sampled down to time eps."""

    def sigmas(self, sde: SDE, levels: int, eps: float) -> Tensor:
        return noise_levels(sde, levels, eps, **self.engine_kwargs())

    def engine_kwargs(self) -> dict:
        raise NotImplementedError


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

    def engine_kwargs(self) -> dict:
        return dict(schedule="karras", rho=self.rho, sigma_min=self.sigma_min, sigma_max=self.sigma_max)


class SDEGrid(Schedule):
    """sigma(t_i) on the SDE's own time grid linspace(T, eps, N)."""

    def __init__(self):
        pass

    def engine_kwargs(self) -> dict:
        return dict(schedule="sde")
