"""ProbabilityFlowODE: Heun's method on the model's probability-flow ODE (no PDS: M M^T would change the flow)."""

from __future__ import annotations

import torch

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling.base import Sampler, SampleResult, check_budget, check_type
from pds_lightning.sampling.step import CountingScore, check_finite, initial_sample
from pds_lightning.sde import SDE


class ProbabilityFlowODE(Sampler):
    """`steps` fixed Heun steps from T to eps (2 NFE each), or `speed_up`; `denoise` ends with one noise-free
    reverse-diffusion step at eps, as score_sde does (1 more NFE)."""

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 denoise: bool = True, name: str | None = None, guidance_scale: float = 0.0,
                 check_finite_every: int = 0):
        super().__init__(name, guidance_scale, check_finite_every)
        check_budget(self.name, "steps", steps, speed_up, eps)
        check_type(self.name, "denoise", denoise, bool, "true or false")
        self.steps, self.speed_up, self.eps, self.denoise = steps, float(speed_up), eps, denoise

    def nfe(self, sde: SDE) -> int:
        N, _ = self.steps_on(sde)
        return 2 * N + int(self.denoise)

    @torch.no_grad()
    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None,
                 dtype: torch.dtype = torch.float32) -> SampleResult:
        self.check_task(known)
        if preconditioner is not None and not preconditioner.is_identity:
            raise ValueError("ProbabilityFlowODE cannot use a PDS preconditioner: dx/dt = f - g^2/2 M M^T score is "
                             "not the model's probability-flow ODE (only the matching M-shaped noise of the "
                             "SDE keeps the marginals p_t), so the deterministic path would go elsewhere. Use PC "
                             "for PDS, or no preconditioner with the ODE")
        sde, N, eps = sde.discretised(self.steps, self.speed_up, self.eps)
        counted = CountingScore(score_fn)
        flow = sde.reverse(counted, probability_flow=True)
        x = initial_sample(sde, shape, Preconditioner(), noise, dtype)
        times = torch.linspace(sde.T, eps, N + 1, device=x.device, dtype=torch.float32)
        for i in range(N):
            t, t_next = times[i], times[i + 1]
            dt = float(t_next - t)
            vec_t = torch.full((shape[0],), float(t), device=x.device)
            d1 = flow.sde(x, vec_t)[0]
            x_euler = x + d1 * dt
            d2 = flow.sde(x_euler, torch.full_like(vec_t, float(t_next)))[0]
            x = x + (d1 + d2) * (0.5 * dt)
            check_finite(x, i, N, self.check_finite_every)
        if self.denoise:
            f, _ = sde.reverse(counted).discretize(x, torch.full((shape[0],), float(eps), device=x.device))
            x = x - f
        return SampleResult(x, counted.calls)
