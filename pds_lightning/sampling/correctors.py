"""Correctors of the PC sampler (score_sde semantics), each preconditioned through the hook.

`update(x, t) -> (x, x_mean)`. The Langevin step size follows the official rule
step = 2 a_t (snr ||xi|| / ||g||)^2 with g = M M^T score and xi = M z; the norms are taken per sample
('sample', the default: a sample depends only on its own noise) or averaged over the batch
('batch', the official rule).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pds_lightning.sde import SDE, VPSDE, per_sample

STEP_SIZE_MODES = ("sample", "batch")


class Corrector:
    def __init__(self, sde: SDE, score_fn, hook, snr: float, n_steps: int, step_size: str = "sample"):
        if step_size not in STEP_SIZE_MODES:
            raise ValueError(f"unknown step_size mode {step_size!r}; choose 'sample' (per-sample norms) "
                             "or 'batch' (official batch-mean rule)")
        self.sde = sde
        self.score_fn = score_fn
        self.hook = hook
        self.snr = float(snr)
        self.n_steps = int(n_steps)
        self.step_size = step_size

    def alpha(self, t: Tensor, like: Tensor) -> Tensor:
        """a_t: the DDPM alpha_i for VP/sub-VP, 1 for VE (official)."""
        if isinstance(self.sde, VPSDE):
            return self.sde.alphas.to(device=like.device, dtype=like.dtype)[self.sde.timestep(t)]
        return torch.ones(t.shape, device=like.device, dtype=like.dtype)

    def update(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class LangevinCorrector(Corrector):
    """Langevin MCMC with the step size set by the signal-to-noise ratio snr."""

    def update(self, x, t):
        alpha = self.alpha(t, x)
        x_mean = x
        for _ in range(self.n_steps):
            g = self.hook.drift(self.score_fn(x, t))
            xi = self.hook.noise(x)
            g_norm = torch.linalg.vector_norm(g.flatten(1), dim=-1)
            xi_norm = torch.linalg.vector_norm(xi.flatten(1), dim=-1)
            if self.step_size == "batch":
                g_norm, xi_norm = g_norm.mean(), xi_norm.mean()
            step = (self.snr * xi_norm / g_norm) ** 2 * 2 * alpha
            x_mean = x + per_sample(step) * g
            x = x_mean + per_sample(torch.sqrt(2 * step)) * xi
        return x, x_mean


class AnnealedLangevinCorrector(Corrector):
    """NCSN's annealed Langevin dynamics: step = 2 a_t (snr std_t)^2."""

    def update(self, x, t):
        alpha = self.alpha(t, x)
        std = self.sde.marginal_prob(x, t)[1]
        step = (self.snr * std) ** 2 * 2 * alpha
        x_mean = x
        for _ in range(self.n_steps):
            x_mean = x + self.hook.drift(per_sample(step) * self.score_fn(x, t))
            x = x_mean + per_sample(torch.sqrt(2 * step)) * self.hook.noise(x)
        return x, x_mean


class NoneCorrector(Corrector):
    """No corrector (predictor-only sampling)."""

    def update(self, x, t):
        return x, x


CORRECTORS = {"langevin": LangevinCorrector, "ald": AnnealedLangevinCorrector, "none": NoneCorrector}


def get_corrector(name: str) -> type[Corrector]:
    if name not in CORRECTORS:
        raise ValueError(f"unknown corrector {name!r}; choose one of {sorted(CORRECTORS)}")
    return CORRECTORS[name]
