"""Predictors of the PC sampler (score_sde semantics), each preconditioned by PDS: one component per update rule.

`update(ctx, x, t) -> (x, x_mean)`: x_mean is the step without its noise (used for noise removal); `ctx` is the
run's StepContext (SDE, score, M, noise). Official PDS (`update`): every drift increment gets M M^T
(`preconditioner.drift`) and every noise draw M (`preconditioner.noise`). With noise g M z that drift does not
keep the marginals p_t: the Fokker-Planck equation gains -(g^2/2) div((M M^T - I) grad p_t), so output
variances are biased on preconditioned modes even as N grows. Consistent PDS (`consistent_update`): drift
f - (g^2/2)(I + M M^T) score with the same noise g M z, which keeps p_t. The identity preconditioner (no
filters) makes both vanilla sampling.
"""

from __future__ import annotations

import math

import torch

from pds_lightning.sampling.base import Component
from pds_lightning.sampling.step import StepContext
from pds_lightning.sde import SDE, VESDE, VPSDE, SubVPSDE, per_sample


class Predictor(Component):
    """A PC predictor: one step of the discretised reverse SDE from t_i to t_{i+1} (no fields of its own)."""

    def __init__(self):
        pass

    def update(self, ctx: StepContext, x, t):
        """The official PDS step (M M^T on the whole drift): (x, x_mean)."""
        raise NotImplementedError

    def consistent_update(self, ctx: StepContext, x, t):
        """The consistent PDS step (drift f - (g^2/2)(I + M M^T) score, keeps p_t): (x, x_mean)."""
        raise NotImplementedError

    @property
    def has_consistent_form(self) -> bool:
        return type(self).consistent_update is not Predictor.consistent_update

    def check(self, sde: SDE) -> None:
        """A clear error now if this update cannot run on `sde`."""

    def reads_ddpm_alphas(self, sde: SDE) -> bool:
        """Whether the update reads `sde`'s DDPM alphas 1 - beta_i (which need N > beta_max steps)."""
        return False

    def linear_step(self, sde: SDE, t):
        """(phi, G2), float [N], of the update written as x_mean = x - M M^T (phi x - G2 score), noise
        sqrt(G2) M z, for a drift f = phi x (the Gaussian surrogate of pds_lightning.alpha reads this)."""
        raise ValueError(f"alpha choosers model the predictors ReverseDiffusion and EulerMaruyama, not "
                         f"{type(self).__name__}; give PDS alpha a number")


class ReverseDiffusion(Predictor):
    """score_sde's reverse-diffusion predictor (the discretised reverse SDE): x_mean = x - M M^T f,
    x = x_mean + G M z with (f, G) the discretised reverse SDE; PDS official or consistent."""

    def update(self, ctx, x, t):
        f, G = ctx.sde.reverse(ctx.score_fn).discretize(x, t)
        x_mean = x - ctx.preconditioner.drift(f)
        return x_mean + per_sample(G) * ctx.mz(x), x_mean

    def consistent_update(self, ctx, x, t):
        """x_mean = x - f + (G^2 / 2)(I + M M^T) score, x = x_mean + G M z."""
        f, G = ctx.sde.discretize(x, t)
        score = ctx.score_fn(x, t)
        x_mean = x - f + per_sample(G ** 2 / 2) * (score + ctx.preconditioner.drift(score))
        return x_mean + per_sample(G) * ctx.mz(x), x_mean

    def reads_ddpm_alphas(self, sde):
        return sde.ddpm_discretisation

    def linear_step(self, sde, t):
        f, G = sde.discretize(torch.ones(len(t), 1, 1, 1), t)
        return f.flatten(), G.square()


class EulerMaruyama(Predictor):
    """Euler-Maruyama on the reverse SDE with dt = -1/N; PDS official or consistent."""

    def update(self, ctx, x, t):
        dt = -1.0 / ctx.sde.N
        z = ctx.mz(x)  # drawn before the score, as the official code does
        drift, diffusion = ctx.sde.reverse(ctx.score_fn).sde(x, t)
        x_mean = x + ctx.preconditioner.drift(drift * dt)
        return x_mean + per_sample(diffusion) * math.sqrt(-dt) * z, x_mean

    def consistent_update(self, ctx, x, t):
        """dx = [f - (g^2 / 2)(I + M M^T) score] dt + g M dw, dt = -1/N."""
        dt = -1.0 / ctx.sde.N
        z = ctx.mz(x)
        f, g = ctx.sde.sde(x, t)
        score = ctx.score_fn(x, t)
        x_mean = x + (f - per_sample(g ** 2 / 2) * (score + ctx.preconditioner.drift(score))) * dt
        return x_mean + per_sample(g) * math.sqrt(-dt) * z, x_mean

    def linear_step(self, sde, t):
        # x_mean = x + M M^T (f - g^2 score) (-1/N), noise g sqrt(1/N)
        drift, g = sde.sde(torch.ones(len(t), 1, 1, 1), t)
        return drift.flatten() / sde.N, g.square() / sde.N


class AncestralSampling(Predictor):
    """Ancestral sampling of the SMLD (VE) / DDPM (VP) chain; PDS official form only."""

    def check(self, sde):
        if isinstance(sde, SubVPSDE) or not isinstance(sde, (VESDE, VPSDE)):
            raise ValueError(f"AncestralSampling supports VE and VP SDEs only, not {type(sde).__name__}; "
                             "use ReverseDiffusion or EulerMaruyama")

    def reads_ddpm_alphas(self, sde):
        return sde.ddpm_discretisation

    def update(self, ctx, x, t):
        score = ctx.score_fn(x, t)
        if isinstance(ctx.sde, VESDE):
            sigma, sigma_prev = ctx.sde.sigma_and_prev(t, x)
            x_mean = x + ctx.preconditioner.drift(score * per_sample(sigma ** 2 - sigma_prev ** 2))
            std = torch.sqrt(sigma_prev ** 2 * (sigma ** 2 - sigma_prev ** 2) / sigma ** 2)
        else:
            beta = ctx.sde.discrete_betas.to(device=x.device, dtype=x.dtype)[ctx.sde.timestep(t)]
            step = (x + per_sample(beta) * score) / per_sample(torch.sqrt(1.0 - beta)) - x
            x_mean = x + ctx.preconditioner.drift(step)
            std = torch.sqrt(beta)
        return x_mean + per_sample(std) * ctx.mz(x), x_mean
