"""The sigma-space frame of the fast samplers (EDM Heun / stochastic, DPM-Solver++(2M) and its SDE form, Euler,
Restart) for VE, VP, sub-VP, and the steps several of them share.

Every SDE's marginal is x = s(t) (x0 + sigma(t) n) (`sde.scale_of_t`, `sde.sigma_of_t`, `sde.t_of_sigma`).
In x_hat = x / s the marginal is x0 + sigma n, with denoiser D(x_hat; sigma) = x_hat + sigma^2 grad log p
= x_hat + sigma^2 s score(s x_hat, t(sigma)), and its probability-flow ODE is dx_hat / dsigma = (x_hat - D) / sigma
(Karras et al. 2022). The samplers step that ODE (or an SDE with the same marginals) on sigma_0 > ... >
sigma_{N-1} > sigma_N = 0 from x_hat = sigma_0 z and return x_hat at sigma = 0, which is x (s(0) = 1).

PDS corrector (a Langevin corrector with PDS): after each step that lands on sigma_i > 0, Langevin steps
x <- x + eps M M^T score + sqrt(2 eps) M z at t(sigma_i), in x-space. For any invertible M this chain keeps
p_t (its generator is div(p M M^T grad log(. / p)) = 0 at p = p_t), so it only pulls the ODE's state back
towards the marginal it should have; the ODE step itself stays unpreconditioned, since M M^T in the
probability-flow drift would change the path and its end point. This is the consistent way to add PDS to a
deterministic solver. The initial draw is unpreconditioned: sigma_0 z is the ODE's prior.

Noise comes from the `noise` source only (SeededNoise: a sample depends only on its seed and settings).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pds_lightning.sampling.base import SampleResult
from pds_lightning.sampling.step import CountingScore, StepContext, check_finite, identity_if_none, standard_normal
from pds_lightning.sde import SDE


class Denoiser:
    """D(x_hat; sigma) = x_hat + sigma^2 s score(s x_hat, t(sigma)), from a score of the SDE's x."""

    def __init__(self, score_fn, sde: SDE):
        self.score_fn = score_fn
        self.sde = sde

    def time(self, sigma: float) -> tuple[float, float]:
        """(t, s) of noise level sigma."""
        t = self.sde.t_of_sigma(torch.tensor(sigma, dtype=torch.float64))
        return float(t), float(self.sde.scale_of_t(t))

    def __call__(self, x_hat: Tensor, sigma: float) -> Tensor:
        t, s = self.time(sigma)
        vec_t = torch.full((x_hat.shape[0],), t, device=x_hat.device, dtype=x_hat.dtype)
        return x_hat + (sigma ** 2 * s) * self.score_fn(s * x_hat, vec_t)


class SigmaRun:
    """One run in sigma-space: the noise levels, the counted denoiser, x_hat = sigma_0 z, the corrector between
    steps, and `memory` for what a multistep method keeps from one step to the next."""

    def __init__(self, score_fn, sde: SDE, sigmas: list[float], shape, noise, preconditioner, corrector,
                 check_finite_every: int, dtype):
        self.sde, self.sigmas, self.noise = sde, sigmas, noise
        self.counted = CountingScore(score_fn)
        self.denoise = Denoiser(self.counted, sde)
        self.x = sigmas[0] * standard_normal(shape, noise, dtype)
        self.corrector = corrector
        self.ctx = StepContext(sde, self.counted, identity_if_none(preconditioner), noise)
        self.check_every = check_finite_every
        self.memory: dict = {}

    @property
    def n(self) -> int:
        """N, the number of steps (levels above 0)."""
        return len(self.sigmas) - 1

    def steps(self):
        """(i, sigma_i, sigma_{i+1}) for i = 0..N-1."""
        return [(i, a, b) for i, (a, b) in enumerate(zip(self.sigmas[:-1], self.sigmas[1:]))]

    def after_step(self, x_hat: Tensor, i: int, sigma: float) -> Tensor:
        """The corrector at sigma > 0 (in x = s x_hat, at t(sigma)), then the finite check."""
        if self.corrector is not None and sigma > 0:
            t, s = self.denoise.time(sigma)
            vec_t = torch.full((x_hat.shape[0],), t, device=x_hat.device, dtype=x_hat.dtype)
            x_hat = self.corrector.update(self.ctx, s * x_hat, vec_t)[0] / s
        check_finite(x_hat, i, self.n, self.check_every)
        return x_hat

    def result(self, x_hat: Tensor) -> SampleResult:
        return SampleResult(x_hat, self.counted.calls)


def heun_step(D: Denoiser, x: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One step of dx/dsigma = (x - D) / sigma: Heun's 2nd-order rule, Euler when landing on sigma = 0."""
    d = (x - D(x, sigma)) / sigma
    x_next = x + (sigma_next - sigma) * d
    if sigma_next == 0:
        return x_next
    d_next = (x_next - D(x_next, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (d + d_next)


#: run.memory key of the last 2M step's (D, h), read by the next step's second-order bracket.
PREVIOUS_2M = "dpmpp_2m"


def dpmpp_2m_step(run: SigmaRun, x: Tensor, sigma: float, sigma_next: float, eta: float = 0.0,
                  S_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022), midpoint form, data prediction in lambda = -log sigma; 1 NFE.

    With h = log(sigma / sigma'), eta_h = eta h and the first-order weight w = -expm1(-h - eta_h):
    x' = (sigma'/sigma) e^(-eta_h) x + w D + [0.5 w (D - D_prev) / r] + S_noise sigma' sqrt(-expm1(-2 eta_h)) z,
    r = h_prev / h, the bracket from the second step on; the last step (to sigma = 0) is x' = D. eta = 0 is the
    deterministic DPM-Solver++(2M) (no draws); eta = 1 matches the reverse SDE's noise. One draw per step to
    sigma' > 0 when eta > 0. The previous (D, h) is kept in `run.memory`.
    """
    denoised = run.denoise(x, sigma)
    if sigma_next == 0:
        return denoised
    h = math.log(sigma / sigma_next)
    eta_h = eta * h
    w = -math.expm1(-h - eta_h)
    x = (sigma_next / sigma) * math.exp(-eta_h) * x + w * denoised
    previous = run.memory.get(PREVIOUS_2M)
    if previous is not None:
        x = x + (0.5 * w * h / previous[1]) * (denoised - previous[0])
    if eta > 0:
        x = x + (S_noise * sigma_next * math.sqrt(-math.expm1(-2 * eta_h))) * run.noise.noise(x)
    run.memory[PREVIOUS_2M] = (denoised, h)
    return x
