"""What the sigma-space samplers share (sampling/solvers.py has the frame): noise levels from a schedule, an
optional Langevin corrector after each step (the one place PDS enters them), the one loop, the exact NFE."""

from __future__ import annotations

import torch
from torch import Tensor

from pds_lightning.sampling.base import Sampler, SampleResult, check_budget, check_type
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import PDS, Preconditioning
from pds_lightning.sampling.schedules import MIN_STEPS, Karras, Schedule
from pds_lightning.sampling.solvers import SigmaRun
from pds_lightning.sde import SDE


class SigmaSampler(Sampler):
    """`steps` noise levels N >= 2 (or `speed_up`: N = int(num_scales / speed_up)) from `schedule` down to
    sigma(eps), then sigma = 0: N steps. `corrector`: Langevin steps at each level > 0 (PDS, when given,
    preconditions only those: M M^T in the ODE drift would change its path). A subclass is its `step` (one
    step from sigma to sigma_next) and its `score_calls` (NFE of the steps alone)."""

    #: The noise jump of a subclass's own (EDM's churn, Restart's restart jump), which must stay isotropic to keep
    #: the marginals p_sigma, so PDS enters only through the corrector there (docs/pds_stochastic.md).
    isotropic_jump = ""
    #: Whether the steps' own noise can be shaped per eigenmode of a preconditioner (UnresolvedBands, PDS
    #: without a corrector): DPMSolverPP2MSDE.
    shapes_noise = False

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None,
                 pds: Preconditioning | None = None, name: str | None = None, guidance_scale: float = 0.0,
                 check_finite_every: int = 0):
        super().__init__(name, guidance_scale, check_finite_every)
        check_budget(self.name, "steps", steps, speed_up, eps, minimum=MIN_STEPS)
        check_type(self.name, "schedule", schedule, Schedule, "a schedule component (Karras, SDEGrid)")
        if eps is not None and not schedule.reads_eps:
            raise ValueError(f"{self.name}: eps {eps} has no effect: the schedule's sigma_min "
                             f"{schedule.sigma_min} sets the last level; remove eps or sigma_min")
        if corrector is not None:
            check_type(self.name, "corrector", corrector, Langevin, "a Langevin corrector or None")
        if pds is not None:
            check_type(self.name, "pds", pds, Preconditioning, "a PDS or UnresolvedBands component, or None")
            pds.check_sigma_sampler(self, corrector)
        self.steps, self.speed_up, self.eps = steps, float(speed_up), eps
        self.schedule, self.corrector, self.pds = schedule, corrector, pds

    def check_pds(self, pds: PDS, corrector: Langevin | None) -> None:
        """PDS enters through the Langevin corrector only: M M^T in the ODE drift would change its path."""
        if corrector is None:
            why = (f" (its {self.isotropic_jump} must add isotropic noise to stay on the marginals p_sigma: "
                   "docs/pds_stochastic.md)") if self.isotropic_jump else ""
            raise ValueError(f"{self.name}: {type(self).__name__} uses PDS only in its Langevin corrector{why}; "
                             "give corrector: Langevin, or leave pds out")

    def check_preconditioner(self, preconditioner) -> None:
        """Refuse, before any score evaluation, a PDS preconditioner M this run cannot use (check_pds's rule)."""
        if preconditioner is not None and not preconditioner.is_identity and self.corrector is None:
            raise ValueError(f"{self.name}: a PDS preconditioner enters {type(self).__name__} only through its "
                             "Langevin corrector (M M^T in the ODE drift would change its path); give corrector: "
                             "Langevin, or no preconditioner")

    def steps_on(self, sde: SDE) -> tuple[int, float]:
        N, eps = super().steps_on(sde)
        if N < MIN_STEPS:
            raise ValueError(f"{self.name}: {type(self).__name__} needs >= {MIN_STEPS} noise levels, speed_up "
                             f"{self.speed_up:g} leaves {N}; lower speed_up")
        return N, eps

    def nfe(self, sde: SDE) -> int:
        N, _ = self.steps_on(sde)
        return self.score_calls(N) + (0 if self.corrector is None else self.corrector.steps_per_level * (N - 1))

    def score_calls(self, n: int) -> int:
        """Score evaluations per sample of the steps alone over n levels (the corrector's come on top)."""
        raise NotImplementedError

    def sigmas(self, sde: SDE) -> list[float]:
        """sigma_0 > ... > sigma_{N-1} > sigma_N = 0 of this sampler on `sde`."""
        N, eps = self.steps_on(sde)
        return self.schedule.sigmas(sde, N, eps).tolist()

    def start(self, run: SigmaRun) -> None:
        """Prepare what the steps of this run need (before any score evaluation)."""

    def step(self, run: SigmaRun, x: Tensor, sigma: float, sigma_next: float) -> Tensor:
        """x_hat at sigma_next from x_hat at sigma."""
        raise NotImplementedError

    def after_level(self, run: SigmaRun, x: Tensor, level: int) -> Tensor:
        """x_hat once the step landing on level `level` (and its corrector) is done."""
        return x

    @torch.no_grad()
    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None,
                 dtype: torch.dtype = torch.float32) -> SampleResult:
        self.check_task(known)
        self.check_preconditioner(preconditioner)
        run = SigmaRun(score_fn, sde, self.sigmas(sde), shape, noise, preconditioner, self.corrector,
                       self.check_finite_every, dtype)
        self.start(run)
        x = run.x
        for i, sigma, sigma_next in run.steps():
            x = run.after_step(self.step(run, x, sigma, sigma_next), i, sigma_next)
            x = self.after_level(run, x, i + 1)
        return run.result(x)
