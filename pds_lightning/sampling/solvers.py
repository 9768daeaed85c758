"""Fast samplers in sigma-space: EDM Heun, EDM stochastic, DPM-Solver++(2M) and Euler/DDIM, for VE, VP, sub-VP.

Every SDE's marginal is x = s(t) (x0 + sigma(t) n) (`sde.scale_of_t`, `sde.sigma_of_t`, `sde.t_of_sigma`).
In x_hat = x / s the marginal is x0 + sigma n, with denoiser D(x_hat; sigma) = x_hat + sigma^2 grad log p
= x_hat + sigma^2 s score(s x_hat, t(sigma)), and its probability-flow ODE is dx_hat / dsigma = (x_hat - D) / sigma
(Karras et al. 2022). The samplers step that ODE on sigma_0 > ... > sigma_{N-1} > sigma_N = 0 from
x_hat = sigma_0 z and return x_hat at sigma = 0, which is x (s(0) = 1).

NFE per sample with `n_steps` = N noise levels: edm_heun, edm_stochastic 2N - 1 (Heun on every step but the
last, an Euler step to sigma = 0); dpmpp_2m, euler N; plus n_corrector_steps * (N - 1) with
`ode_corrector: langevin`.

PDS corrector (`ode_corrector: langevin`): after each step that lands on sigma_i > 0, Langevin steps
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

from pds_lightning.sampling.correctors import LangevinCorrector
from pds_lightning.sampling.samplers import SampleResult, _check_finite, _CountingScore, identity_if_none
from pds_lightning.sde import SDE

SCHEDULES = ("karras", "sde")
ODE_CORRECTORS = ("none", "langevin")
MIN_STEPS = 2  # one noise level is only D(sigma_max z; sigma_max), the data mean: not a sampler


def solver_nfe(method: str, n_steps: int, ode_corrector: str = "none", n_corrector_steps: int = 1) -> int:
    """Exact score evaluations per sample of solver `method` with `n_steps` noise levels."""
    base = 2 * n_steps - 1 if method in ("edm_heun", "edm_stochastic") else n_steps
    return base + (n_corrector_steps * (n_steps - 1) if ode_corrector == "langevin" else 0)


def noise_levels(sde: SDE, n_steps: int, eps: float, schedule: str = "karras", rho: float = 7.0,
                 sigma_min: float | None = None, sigma_max: float | None = None) -> Tensor:
    """sigma_0 > ... > sigma_{N-1} > sigma_N = 0, [N + 1] float64 on the CPU.

    'karras': sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, with
    sigma_min = sigma(eps) and sigma_max = sigma(T) unless given; 'sde': sigma(t_i) on the SDE's own time grid.
    """
    if n_steps < MIN_STEPS:
        raise ValueError(f"these samplers need n_steps >= {MIN_STEPS} noise levels, got {n_steps}; "
                         "raise n_steps (or lower speed_up)")
    if schedule == "karras":
        lo = float(sde.sigma_of_t(torch.tensor(eps, dtype=torch.float64))) if sigma_min is None else float(sigma_min)
        hi = float(sde.sigma_of_t(torch.tensor(sde.T, dtype=torch.float64))) if sigma_max is None else float(sigma_max)
        if not 0 < lo < hi:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {lo:g} and {hi:g}")
        ramp = torch.linspace(0, 1, n_steps, dtype=torch.float64)
        sigmas = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    elif schedule == "sde":
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("sigma_min/sigma_max set the 'karras' schedule; the 'sde' schedule uses the SDE's grid")
        sigmas = sde.sigma_of_t(sde.time_grid(n_steps, eps).double())
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    return torch.cat([sigmas, sigmas.new_zeros(1)])


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


def langevin_corrector(sde: SDE, score_fn, noise, preconditioner, snr: float, n_steps: int, step_size: str):
    """The PDS Langevin corrector of correctors.py (the one call site of its API in this file)."""
    return LangevinCorrector(sde, score_fn, identity_if_none(preconditioner), noise, snr, n_steps, step_size)


class _Run:
    """What every solver shares: the noise levels, the denoiser, x_hat at sigma_0, the corrector, NFE."""

    def __init__(self, score_fn, sde: SDE, shape, noise, preconditioner, n_steps=None, speed_up=1.0, eps=None,
                 schedule="karras", rho=7.0, sigma_min=None, sigma_max=None, ode_corrector="none", snr=0.16,
                 n_corrector_steps=1, step_size="sample", check_finite_every=0, dtype=torch.float32):
        if len(shape) != 4:
            raise ValueError(f"shape must be [B, C, H, W], got {tuple(shape)}")
        if ode_corrector not in ODE_CORRECTORS:
            raise ValueError(f"unknown ode_corrector {ode_corrector!r}; choose one of {ODE_CORRECTORS}")
        if preconditioner is not None and not preconditioner.is_identity and ode_corrector == "none":
            raise ValueError("a PDS preconditioner enters these ODE samplers only through the Langevin corrector "
                             "(M M^T in the ODE drift would change its path); set ode_corrector: langevin or "
                             "preconditioner: none")
        _, N, eps = sde.discretised(n_steps, speed_up, eps)
        self.sigmas = noise_levels(sde, N, eps, schedule, rho, sigma_min, sigma_max).tolist()
        self.counted = _CountingScore(score_fn)
        self.denoise = Denoiser(self.counted, sde)
        self.noise = noise
        self.x = self.sigmas[0] * noise.noise(torch.zeros(shape, device=noise.device, dtype=dtype))
        self.corrector = None
        if ode_corrector == "langevin" and n_corrector_steps > 0:
            self.corrector = langevin_corrector(sde, self.counted, noise, preconditioner, snr, n_corrector_steps,
                                                step_size)
        self.check_every = check_finite_every

    def steps(self):
        """(i, sigma_i, sigma_{i+1}) for i = 0..N-1."""
        return [(i, a, b) for i, (a, b) in enumerate(zip(self.sigmas[:-1], self.sigmas[1:]))]

    def after_step(self, x_hat: Tensor, i: int, sigma: float) -> Tensor:
        """The PDS Langevin corrector at sigma > 0 (in x = s x_hat, at t(sigma)), then the finite check."""
        if self.corrector is not None and sigma > 0:
            t, s = self.denoise.time(sigma)
            vec_t = torch.full((x_hat.shape[0],), t, device=x_hat.device, dtype=x_hat.dtype)
            x_hat = self.corrector.update(s * x_hat, vec_t)[0] / s
        _check_finite(x_hat, i, len(self.sigmas) - 1, self.check_every)
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


@torch.no_grad()
def edm_heun(score_fn, sde: SDE, shape, *, noise, preconditioner=None, **settings) -> SampleResult:
    """EDM deterministic sampler (Karras et al. 2022, Alg. 1): Heun steps, Euler on the last; 2N - 1 NFE."""
    run = _Run(score_fn, sde, shape, noise, preconditioner, **settings)
    x = run.x
    for i, sigma, sigma_next in run.steps():
        x = run.after_step(heun_step(run.denoise, x, sigma, sigma_next), i, sigma_next)
    return run.result(x)


@torch.no_grad()
def edm_stochastic(score_fn, sde: SDE, shape, *, noise, preconditioner=None, S_churn: float = 0.0,
                   S_tmin: float = 0.0, S_tmax: float | None = None, S_noise: float = 1.0, **settings) -> SampleResult:
    """EDM stochastic sampler (Alg. 2): raise sigma_i to sigma_hat = (1 + gamma) sigma_i by fresh noise, with
    gamma = min(S_churn / N, sqrt 2 - 1) inside [S_tmin, S_tmax] (None: no upper bound), then a Heun step to
    sigma_{i+1}. One draw per step, taken even where gamma = 0 (the stream does not depend on the window)."""
    run = _Run(score_fn, sde, shape, noise, preconditioner, **settings)
    n = len(run.sigmas) - 1
    s_tmax = math.inf if S_tmax is None else S_tmax
    x = run.x
    for i, sigma, sigma_next in run.steps():
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_tmin <= sigma <= s_tmax else 0.0
        z = S_noise * noise.noise(x)
        sigma_hat = sigma * (1 + gamma)
        x = x + math.sqrt(sigma_hat ** 2 - sigma ** 2) * z
        x = run.after_step(heun_step(run.denoise, x, sigma_hat, sigma_next), i, sigma_next)
    return run.result(x)


@torch.no_grad()
def dpmpp_2m(score_fn, sde: SDE, shape, *, noise, preconditioner=None, **settings) -> SampleResult:
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep in lambda = -log sigma; 1 NFE per step.

    x' = (sigma'/sigma) x - expm1(-h) D_d with h = log(sigma / sigma'); D_d = D on the first step and on the
    last (to sigma = 0, where x' = D), else D_d = (1 + 1/(2r)) D - 1/(2r) D_prev with r = h_prev / h.
    """
    run = _Run(score_fn, sde, shape, noise, preconditioner, **settings)
    x, previous = run.x, None  # previous: (D, h) of the last step
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h = math.log(sigma / sigma_next)
            d = denoised
            if previous is not None:
                r = previous[1] / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous[0]
            x = (sigma_next / sigma) * x - math.expm1(-h) * d
            previous = (denoised, h)
        x = run.after_step(x, i, sigma_next)
    return run.result(x)


@torch.no_grad()
def euler(score_fn, sde: SDE, shape, *, noise, preconditioner=None, **settings) -> SampleResult:
    """Euler in sigma-space, x' = x + (sigma' - sigma) (x - D) / sigma: DDIM (eta 0) and DPM-Solver++(1); N NFE."""
    run = _Run(score_fn, sde, shape, noise, preconditioner, **settings)
    x = run.x
    for i, sigma, sigma_next in run.steps():
        x = run.after_step(x + (sigma_next - sigma) * (x - run.denoise(x, sigma)) / sigma, i, sigma_next)
    return run.result(x)


SOLVERS = {"edm_heun": edm_heun, "edm_stochastic": edm_stochastic, "dpmpp_2m": dpmpp_2m, "euler": euler}
