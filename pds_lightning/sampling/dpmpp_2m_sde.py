"""DPMSolverPP2MSDE: DPM-Solver++(2M) SDE (Lu et al. 2022), the stochastic multistep solver; N NFE.

With PDS its noise is shaped by M. In sigma-space the family dx = -sigma' sigma grad log p dt - beta sigma^2 B
grad log p dt + sqrt(2 beta) sigma M dw (backward in time, any constant PSD B = M M^T) has the marginals p_sigma
for every beta >= 0. With beta = eta sigma'/sigma and D frozen over the step it is linear in x along each
eigenvector of B (eigenvalue b): the vanilla step with eta replaced by eta_b = eta b (docs/pds_stochastic.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import Preconditioning
from pds_lightning.sampling.schedules import Karras, Schedule
from pds_lightning.sampling.sigma import SigmaSampler
from pds_lightning.sampling.solvers import PREVIOUS_2M, SigmaRun, dpmpp_2m_step


class DPMSolverPP2MSDE(SigmaSampler):
    """Data prediction in lambda = -log sigma with fresh noise each step: `eta` scales the noise the step adds
    (1: the reverse SDE's, 0: DPM-Solver++(2M) exactly), `S_noise` its amplitude. `pds` shapes that noise, eta b
    per eigenvalue b of B, no extra NFE (docs/pds_stochastic.md): PDS (filters 'freq' or 'space'; B = M M^T, which
    also preconditions the corrector when one is given) or UnresolvedBands (B(sigma) from the data's mode
    variances). Other fields: SigmaSampler."""

    shapes_noise = True

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None,
                 pds: Preconditioning | None = None, eta: float = 1.0, S_noise: float = 1.0, name: str | None = None,
                 guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(steps, speed_up, eps, schedule, corrector, pds, name, guidance_scale, check_finite_every)
        check_number(self.name, "eta", eta, low=0, hint=" (1: the reverse SDE's noise, 0: deterministic)")
        check_number(self.name, "S_noise", S_noise, low=0)
        if eta == 0 and S_noise != 1:
            raise ValueError(f"{self.name}: S_noise {S_noise} has no effect at eta 0 (no noise is added); remove "
                             "S_noise or raise eta")
        if pds is not None and eta == 0 and corrector is None:
            raise ValueError(f"{self.name}: eta 0 injects no noise for PDS to shape; set eta > 0, give a corrector, "
                             "or leave pds out")
        self.eta, self.S_noise = float(eta), float(S_noise)

    def check_pds(self, pds, corrector):
        """PDS shapes this sampler's own noise (no corrector needed), per eigenmode of M M^T."""
        if pds.filters == "both":
            raise ValueError(f"{self.name}: PDS filters 'both' cannot shape the noise of DPMSolverPP2MSDE (M M^T = "
                             "C S^2 C is diagonal in no single basis, so its per-mode integrator has no closed form); "
                             "choose PDS filters 'freq' or 'space'")

    def check_preconditioner(self, preconditioner):
        if preconditioner is not None and not preconditioner.is_identity:
            preconditioner.check_gram_diagonal()

    def score_calls(self, n):
        return n

    def step(self, run, x, sigma, sigma_next):
        # B is read at the step's start sigma (for UnresolvedBands; PDS's B is constant)
        if run.ctx.preconditioner.is_identity:  # vanilla: the shared 2M step, bytes unchanged
            return dpmpp_2m_step(run, x, sigma, sigma_next, self.eta, self.S_noise)
        return self.shaped_step(run, x, sigma, sigma_next)

    def shaped_step(self, run: SigmaRun, x: Tensor, sigma: float, sigma_next: float) -> Tensor:
        """The step per eigenvalue b of B = M M^T, with h = log(sigma / sigma_next) (D at sigma = 0 as vanilla):
        x' = (sigma'/sigma) e^(-eta b h) x + w_b D + [0.5 w_b (D - D_prev) h / h_prev] + S_noise sigma'
        sqrt(1 - e^(-2 eta b h)) z, w_b = 1 - e^(-(1 + eta b) h); the bracket from the second step on, one draw z
        when eta > 0 (the vanilla step's draws and NFE)."""
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            return denoised
        h, ratio = math.log(sigma / sigma_next), sigma_next / sigma

        def eta_h(b: Tensor) -> Tensor:
            return self.eta * b * h

        def w(b: Tensor) -> Tensor:
            return -torch.expm1(-h - eta_h(b))

        terms = [(lambda b: ratio * torch.exp(-eta_h(b)), x), (w, denoised)]
        previous = run.memory.get(PREVIOUS_2M)
        if previous is not None:
            terms.append((lambda b: 0.5 * w(b) * h / previous[1], denoised - previous[0]))
        if self.eta > 0:
            z = run.noise.noise(x)
            terms.append((lambda b: self.S_noise * sigma_next * torch.sqrt(-torch.expm1(-2 * eta_h(b))), z))
        run.memory[PREVIOUS_2M] = (denoised, h)
        return run.ctx.preconditioner.gram_apply(terms, sigma)
