"""The Gaussian surrogate's exact recursion for DPM-Solver++(2M) SDE, its PDS-shaped noise and Langevin corrector.

On the surrogate N(mu, F^-1 diag(lam) F) the denoiser is D = mu + kappa (x_hat - mu) per Fourier mode, kappa =
lam / (lam + sigma^2), and the sampler's step with frequency filter R (b = R^2 per mode; DPMSolverPP2MSDE.shaped_step)
is linear in y_i = x_hat_i - mu and y_{i-1}: y_{i+1} = a y_i + c y_{i-1} + noise. The output law per mode is
therefore Gaussian; its moments follow from Var y_i, Var y_{i-1}, Cov(y_i, y_{i-1}) and E y_i = m_i mu, propagated in
closed form. The Langevin corrector uses expected norms (`Corrector.expected_step`), as in the PC recursion
(surrogate.py). A space filter is modelled as surrogate.py does for PC: by mean(S^2) per channel (exact for
stationary data).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from pds_lightning.sampling import DPMSolverPP2MSDE
from pds_lightning.sampling.solvers import Denoiser
from pds_lightning.sde import SDE


def refuse_skew(sampler) -> None:
    """The surrogate's recursions are per Fourier mode: a corrector with a skew S (which couples modes) is refused."""
    if getattr(sampler.corrector, "skew", None) is not None:
        raise ValueError(f"sampler {sampler.name!r}: the Gaussian surrogate evolves each Fourier mode on its own, and "
                         "the corrector's skew couples modes; give PDS alpha Pilot or a number")


def dpmpp_2m_sde_output_moments(modes, gain: Tensor | Callable[[float], Tensor], sde: SDE,
                                sampler: DPMSolverPP2MSDE) -> tuple[Tensor, Tensor]:
    """Exact output moments of DPMSolverPP2MSDE on the Gaussian model of `modes` (lam, count, mean_sq), per
    candidate and mode: (variance v, mean factor gamma: E x_out = gamma mu), each [A, K]; `gain` b of B per mode,
    or a function of sigma giving it (a B(sigma), read at each step's start as the sampler does)."""
    sigmas = sampler.sigmas(sde)
    eta, S_noise = sampler.eta, sampler.S_noise
    gain_at = gain if callable(gain) else (lambda sigma: gain)
    lam, b = modes.lam, gain_at(sigmas[0])
    V = torch.full_like(b, sigmas[0] ** 2)  # x_hat = sigma_0 z: y = sigma_0 z - mu
    P, cov = torch.zeros_like(b), torch.zeros_like(b)  # Var y_{i-1}, Cov(y_i, y_{i-1})
    m, m_prev = -torch.ones_like(b), torch.zeros_like(b)
    kappa_prev = h_prev = None
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        kappa = lam / (lam + sigma ** 2)
        if sigma_next == 0:  # x' = D
            return kappa ** 2 * V, 1 + kappa * m
        h = math.log(sigma / sigma_next)
        b = gain_at(sigma)
        eta_h = eta * b * h
        w = -torch.expm1(-h - eta_h)
        a, c = (sigma_next / sigma) * torch.exp(-eta_h) + w * kappa, torch.zeros_like(b)
        if kappa_prev is not None:  # + 0.5 w (D - D_prev) h / h_prev
            half = 0.5 * w * h / h_prev
            a, c = a + half * kappa, -half * kappa_prev
        noise = (S_noise * sigma_next) ** 2 * -torch.expm1(-2 * eta_h) if eta > 0 else 0.0
        V, P, cov = a * a * V + c * c * P + 2 * a * c * cov + noise, V, a * V + c * cov
        m, m_prev = a * m + c * m_prev, m
        V, cov, m = _corrector(modes, b, sde, sampler.corrector, sigma_next, V, cov, m)
        kappa_prev, h_prev = kappa, h
    raise AssertionError("the noise levels end at sigma = 0")


def _corrector(modes, b: Tensor, sde: SDE, corrector, sigma: float, V: Tensor, cov: Tensor, m: Tensor):
    """The Langevin corrector at sigma in x = s x_hat (expected norms): y <- (1 - eps b d) y + sqrt(2 eps b) / s z,
    d = 1 / (s^2 (lam + sigma^2)), eps = corrector.expected_step(a_t, ., E||M z||^2, E||M M^T score||^2)."""
    if corrector is None:
        return V, cov, m
    t, s = Denoiser(None, sde).time(sigma)
    a_t = float(sde.ddpm_alpha(torch.tensor([t], dtype=torch.float64), torch.ones(1, 1, 1, 1)).flatten()[0])
    d = 1.0 / (s * s * (modes.lam + sigma ** 2))
    noise_power = (b * modes.count).sum(-1, keepdim=True)
    for _ in range(corrector.steps_per_level):
        g_power = ((b * d * s).square() * (V * modes.count + m.square() * modes.mean_sq)).sum(-1, keepdim=True)
        eps = corrector.expected_step(a_t, s * sigma, noise_power, g_power)
        c = 1 - eps * b * d
        V, cov, m = c * c * V + 2 * eps * b / (s * s), c * cov, c * m
    return V, cov, m
