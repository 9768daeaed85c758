"""Correctors of the PC sampler (score_sde semantics), each preconditioned by PDS: one component per update rule.

`update(ctx, x, t) -> (x, x_mean)` runs `steps_per_level` MCMC steps at t (`ctx`: the run's StepContext). The
Langevin step size follows the official rule step = 2 a_t (snr ||xi|| / ||g||)^2 with a_t = `sde.ddpm_alpha`,
g = M M^T score and xi = M z; the norms are taken per sample ('sample', the default: a sample depends only on
its own noise) or averaged over the batch ('batch', the official rule). Each component checks its own fields.
Sub-VP has no DDPM chain of its own: its Langevin and ALD a_t are the VP's 1 - beta_i at t's level (the
official score_sde code crashes there instead). The preconditioned corrector keeps the target p_t.
"""

from __future__ import annotations

import torch

from pds_lightning.sampling.base import Component, check_choice, check_number, check_type
from pds_lightning.sampling.skew import Skew
from pds_lightning.sampling.step import StepContext
from pds_lightning.sde import SDE, per_sample

#: Langevin step-size rules: per-sample norms, or the official batch-mean norms.
STEP_SIZE_MODES = ("sample", "batch")


class Corrector(Component):
    """A corrector: `steps_per_level` MCMC steps at each noise level, step size set by `snr`."""

    def __init__(self, snr: float = 0.16, steps_per_level: int = 1):
        check_number(type(self).__name__, "snr", snr, low=0, low_open=True)
        check_number(type(self).__name__, "steps_per_level", steps_per_level, low=1, integer=True,
                     hint=" (no corrector: leave the corrector out)")
        self.snr, self.steps_per_level = float(snr), int(steps_per_level)

    def update(self, ctx: StepContext, x, t):
        raise NotImplementedError

    def reads_ddpm_alphas(self, sde: SDE) -> bool:
        """The step size reads a_t, `sde`'s DDPM alphas 1 - beta_i on VP and sub-VP."""
        return sde.min_ddpm_steps() > 1

    def expected_step(self, a_t, std, noise_power, score_power):
        """The step size from expected squared norms E||M z||^2 and E||M M^T score||^2 (the Gaussian surrogate
        of pds_lightning.alpha, where the per-sample norms concentrate to these)."""
        raise NotImplementedError


class Langevin(Corrector):
    """Langevin MCMC, step 2 a_t (snr ||M z|| / ||M M^T score||)^2 with norms per sample ('sample') or
    averaged over the batch ('batch', the official rule). The PDS corrector keeps p_t. `skew`: a skew-symmetric
    S (sampling/skew.py) added to the drift, (M M^T + S) score, which keeps p_t too; None is S = 0."""

    def __init__(self, snr: float = 0.16, steps_per_level: int = 1, step_size: str = "sample",
                 skew: Skew | None = None):
        super().__init__(snr, steps_per_level)
        check_choice("Langevin", "step_size", step_size, STEP_SIZE_MODES)
        if skew is not None:
            check_type("Langevin", "skew", skew, Skew, "a skew component (PairedRotation) or None")
        self.step_size, self.skew = step_size, skew

    def config(self) -> dict:
        """As Component.config, with `skew` only when set: a config without S stays the one stored (and compared
        by predict manifests) before the field existed."""
        config = super().config()
        if self.skew is None:
            del config["init_args"]["skew"]
        return config

    def update(self, ctx, x, t):
        alpha_t = ctx.sde.ddpm_alpha(t, x)
        x_mean = x
        for _ in range(self.steps_per_level):
            score = ctx.score_fn(x, t)
            g = ctx.preconditioner.drift(score)
            if self.skew is not None:  # (M M^T + S) score keeps p_t; the snr step then sees the whole drift
                g = g + self.skew(score)
            xi = ctx.mz(x)
            g_norm = torch.linalg.vector_norm(g.flatten(1), dim=-1)
            xi_norm = torch.linalg.vector_norm(xi.flatten(1), dim=-1)
            if self.step_size == "batch":
                g_norm, xi_norm = g_norm.mean(), xi_norm.mean()
            step = (self.snr * xi_norm / g_norm) ** 2 * 2 * alpha_t
            x_mean = x + per_sample(step) * g
            x = x_mean + per_sample(torch.sqrt(2 * step)) * xi
        return x, x_mean

    def expected_step(self, a_t, std, noise_power, score_power):
        return 2 * a_t * self.snr ** 2 * noise_power / score_power


class ALD(Corrector):
    """NCSN's annealed Langevin dynamics, step 2 a_t (snr std_t)^2."""

    def update(self, ctx, x, t):
        alpha_t = ctx.sde.ddpm_alpha(t, x)
        std = ctx.sde.marginal_prob(x, t)[1]
        step = (self.snr * std) ** 2 * 2 * alpha_t
        x_mean = x
        for _ in range(self.steps_per_level):
            x_mean = x + ctx.preconditioner.drift(per_sample(step) * ctx.score_fn(x, t))
            x = x_mean + per_sample(torch.sqrt(2 * step)) * ctx.mz(x)
        return x, x_mean

    def expected_step(self, a_t, std, noise_power, score_power):
        return 2 * a_t * self.snr ** 2 * std * std
