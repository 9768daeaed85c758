"""The PDS predictor-corrector sampler for VE SDEs written out on one screen, as in the official code.

Same run as `PC(predictor=ReverseDiffusion(), corrector=Langevin())` on a VESDE, to the bit, with every formula inline: the readable reference for the general sampler.
M is the PDS preconditioner (M z: `noise`, M M^T g: `drift`); without one M = I (vanilla score_sde).
"""

from __future__ import annotations

import torch

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling.base import SampleResult
from pds_lightning.sde import VESDE, per_sample


@torch.no_grad()
def pds_pc_sampler(score_fn, sde: VESDE, shape, *, noise, preconditioner: Preconditioner | None = None,
                   snr: float = 0.16, steps: int | None = None, speed_up: float = 1.0,
                   eps: float | None = None, step_size: str = "sample", denoise: bool = True,
                   dtype: torch.dtype = torch.float32) -> SampleResult:
    """Official PDS sampling of a VE SDE: at each t_i, one Langevin corrector step, then reverse diffusion."""
    M = Preconditioner() if preconditioner is None else preconditioner
    sde, N, eps = sde.discretised(steps, speed_up, eps)            # official speed_up rule
    nfe = 0
    x = sde.prior_sampling(M.noise(noise.noise(torch.zeros(shape, device=noise.device, dtype=dtype))))  # sigma_max M z
    for t in sde.time_grid(N, eps, device=x.device):               # t_i = linspace(T, eps, N)
        vec_t = torch.full((shape[0],), float(t), device=x.device)

        # Corrector (Langevin): x <- x + step M M^T score + sqrt(2 step) M z,
        # step = 2 a_t (snr ||M z|| / ||M M^T score||)^2 with a_t = 1 for VE.
        grad = M.drift(score_fn(x, vec_t))                         # M M^T score
        Mz = M.noise(noise.noise(x))                               # M z
        grad_norm = torch.linalg.vector_norm(grad.flatten(1), dim=-1)
        noise_norm = torch.linalg.vector_norm(Mz.flatten(1), dim=-1)
        if step_size == "batch":                                   # official: norms averaged over the batch
            grad_norm, noise_norm = grad_norm.mean().expand(shape[0]), noise_norm.mean().expand(shape[0])
        step = (snr * noise_norm / grad_norm) ** 2 * 2
        x_mean = x + per_sample(step) * grad
        x = x_mean + per_sample(torch.sqrt(2 * step)) * Mz

        # Predictor (reverse diffusion of SMLD): G = sqrt(sigma_i^2 - sigma_{i-1}^2),
        # x_mean = x + M M^T (G^2 score), x = x_mean + G M z.
        sigma, sigma_prev = sde.sigma_and_prev(vec_t, x)
        G = torch.sqrt(sigma ** 2 - sigma_prev ** 2)
        x_mean = x + M.drift(per_sample(G) ** 2 * score_fn(x, vec_t))
        x = x_mean + per_sample(G) * M.noise(noise.noise(x))
        nfe += 2
    return SampleResult(x_mean if denoise else x, nfe)
