"""What the sigma-space samplers share (sampling/solvers.py has the maths): noise levels from a schedule,
an optional Langevin corrector after each step (the one place PDS enters them), the exact NFE."""

from __future__ import annotations

from pds_lightning.sampling.base import Sampler, check_budget, check_type
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.pds import PDS
from pds_lightning.sampling.schedules import Karras, Schedule
from pds_lightning.sampling.solvers import MIN_STEPS, SOLVERS, solver_nfe
from pds_lightning.sde import SDE, resolve_steps


class SigmaSampler(Sampler):
    """`levels` noise levels N >= 2 (or `speed_up`: N = int(num_scales / speed_up)) from `schedule` down to
    sigma(eps), then sigma = 0. `corrector`: Langevin steps at each level > 0 (PDS, when given, preconditions
    only those: M M^T in the ODE drift would change its path). Subclasses name their method in `method`."""

    method = ""

    def __init__(self, levels: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 schedule: Schedule = Karras(), corrector: Langevin | None = None, pds: PDS | None = None,
                 name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(name, guidance_scale, check_finite_every)
        check_budget(self.name, "levels", levels, speed_up, eps, minimum=MIN_STEPS)
        check_type(self.name, "schedule", schedule, Schedule, "a schedule component (Karras, SDEGrid)")
        if corrector is not None:
            check_type(self.name, "corrector", corrector, Langevin, "a Langevin corrector or None")
        if pds is not None:
            check_type(self.name, "pds", pds, PDS, "a PDS component or None")
            if corrector is None:
                raise ValueError(f"{self.name}: {type(self).__name__} uses PDS only in its Langevin corrector; "
                                 "give corrector: Langevin, or leave pds out")
            if pds.predictor != "official" or pds.restrict != "project":
                raise ValueError(f"{self.name}: PDS predictor / restrict apply to the PC sampler; "
                                 f"{type(self).__name__} has no predictor to precondition and fills in no known part")
            if pds.chooses_alpha:
                raise ValueError(f"{self.name}: alpha choosers model the PC sampler; give PDS alpha a number")
        self.levels, self.speed_up, self.eps = levels, float(speed_up), eps
        self.schedule, self.corrector, self.pds = schedule, corrector, pds

    def levels_for(self, sde: SDE) -> int:
        N, _ = resolve_steps(sde.N, sde.default_eps, n_steps=self.levels, speed_up=self.speed_up, eps=self.eps)
        if N < MIN_STEPS:
            raise ValueError(f"{self.name}: {type(self).__name__} needs >= {MIN_STEPS} noise levels, speed_up "
                             f"{self.speed_up:g} leaves {N}; lower speed_up")
        return N

    def nfe(self, sde: SDE) -> int:
        c = self.corrector
        return self.levels_nfe(self.levels_for(sde), "none" if c is None else "langevin",
                               1 if c is None else c.steps_per_level)

    def levels_nfe(self, levels: int, ode_corrector: str, n_corrector_steps: int) -> int:
        """Score evaluations per sample with `levels` noise levels (the engine's own count)."""
        return solver_nfe(self.method, levels, ode_corrector, n_corrector_steps)

    def engine(self):
        """The sigma-space sampling function this component runs (solvers.py by `method`)."""
        return SOLVERS[self.method]

    def extra_kwargs(self) -> dict:
        return {}

    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None):
        self.known_unsupported(known)
        c = self.corrector
        corrector = {} if c is None else dict(ode_corrector="langevin", snr=c.snr, n_corrector_steps=c.steps_per_level,
                                               step_size=c.step_size)
        return self.engine()(score_fn, sde, shape, noise=noise, preconditioner=preconditioner,
                             n_steps=self.levels, speed_up=self.speed_up, eps=self.eps,
                             check_finite_every=self.check_finite_every, **self.schedule.engine_kwargs(),
                             **corrector, **self.extra_kwargs())
