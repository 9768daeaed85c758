"""PC: predictor-corrector sampling of the reverse SDE, vanilla or PDS, with the known-part hook of tasks."""

from __future__ import annotations

import torch

from pds_lightning.sampling.base import Sampler, SampleResult, check_budget, check_type
from pds_lightning.sampling.correctors import Corrector, Langevin
from pds_lightning.sampling.known import RestrictedPreconditioner
from pds_lightning.sampling.pds import PDS, Preconditioning
from pds_lightning.sampling.predictors import Predictor, ReverseDiffusion
from pds_lightning.sampling.step import (CountingScore, StepContext, check_finite, identity_if_none,
                                         initial_sample)
from pds_lightning.sde import SDE


class PC(Sampler):
    """Per PC step t_i of linspace(T, eps, N): the corrector, then the predictor (score_sde's order).

    `steps` N, or `speed_up` (N = int(num_scales / speed_up), eps = default_eps * speed_up); `eps` overrides
    the end time. `predictor` / `corrector`: None leaves that half out. `denoise`: return the last predictor
    update's noise-free mean. `pds`: the PDS component, None is vanilla. Default: the official PDS paper's
    sampler without PDS (reverse diffusion + Langevin, snr 0.16) at the SDE's full step count.
    """

    def __init__(self, steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 predictor: Predictor | None = ReverseDiffusion(),
                 corrector: Corrector | None = Langevin(), pds: Preconditioning | None = None, denoise: bool = True,
                 name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(name, guidance_scale, check_finite_every)
        check_budget(self.name, "steps", steps, speed_up, eps)
        if predictor is not None:
            check_type(self.name, "predictor", predictor, Predictor, "a predictor component or None")
        if corrector is not None:
            check_type(self.name, "corrector", corrector, Corrector, "a corrector component or None")
        if pds is not None:
            check_type(self.name, "pds", pds, PDS,
                       "a PDS component or None (UnresolvedBands shapes the noise of DPMSolverPP2MSDE only)")
        check_type(self.name, "denoise", denoise, bool, "true or false")
        if predictor is None and corrector is None:
            raise ValueError(f"{self.name}: a PC sampler needs a predictor, a corrector or both")
        if predictor is None and not denoise:
            raise ValueError(f"{self.name}: denoise=False has no effect without a predictor (the corrector's "
                             "noise-free mean is never returned); remove denoise or give a predictor")
        if pds is not None and pds.consistent:
            self.check_consistent_form(predictor)
        self.steps, self.speed_up, self.eps = steps, float(speed_up), eps
        self.predictor, self.corrector, self.pds, self.denoise = predictor, corrector, pds, denoise

    def check_consistent_form(self, predictor: Predictor | None) -> None:
        """PDS(predictor='consistent') preconditions a predictor that has a consistent form."""
        if predictor is None:
            raise ValueError(f"{self.name}: PDS predictor 'consistent' preconditions the PC predictor, and this "
                             "sampler has none (corrector only); use PDS(predictor='official') or give a predictor")
        if not predictor.has_consistent_form:
            raise ValueError(f"{self.name}: PDS predictor 'consistent' exists for ReverseDiffusion and "
                             f"EulerMaruyama, not {type(predictor).__name__}; use PDS(predictor='official')")

    def nfe(self, sde: SDE) -> int:
        N, _ = self.steps_on(sde)
        return N * ((self.predictor is not None) + (0 if self.corrector is None else self.corrector.steps_per_level))

    def ddpm_table_users(self, sde: SDE) -> list[str]:
        """The updates that read `sde`'s DDPM alphas 1 - beta_i: the DDPM predictors on VP, and the Langevin /
        ALD correctors (a_t) on VP and sub-VP. Empty on VE."""
        users = []
        if self.predictor is not None and self.predictor.reads_ddpm_alphas(sde):
            users.append(f"the {type(self.predictor).__name__} predictor")
        if self.corrector is not None and self.corrector.reads_ddpm_alphas(sde):
            users.append(f"the {type(self.corrector).__name__} corrector (a_t)")
        return users

    def check(self, sde: SDE) -> None:
        if self.predictor is not None:
            self.predictor.check(sde)
        N, _ = self.steps_on(sde)
        users = self.ddpm_table_users(sde)
        n_min = sde.min_ddpm_steps()
        if users and N < n_min:
            raise ValueError(
                f"{type(sde).__name__} with beta_max {sde.beta_1:g} cannot be sampled in {N} steps by "
                f"{' and '.join(users)}: they read the DDPM alphas 1 - beta_i, which reach 1 - beta_max / N = "
                f"{1 - sde.beta_1 / N:.3g} <= 0 (square roots of negative numbers, division by zero). Use at "
                f"least {n_min} steps (steps >= {n_min}, or speed_up <= {sde.N / n_min:.4g}), or predictor "
                "EulerMaruyama with corrector: null, which works at any step count")

    def check_task(self, known) -> None:
        """PC fills in any task; its PDS restrict 'subspace' acts on a task's known part only, so without one it
        would be ignored."""
        if known is None and self.pds is not None and self.pds.restrict != "project":
            raise ValueError(f"{self.name}: PDS restrict {self.pds.restrict!r} keeps M off the known part of a task "
                             "(inpainting, colorization), and this run has no task; remove restrict (or set it "
                             "to 'project') or sample a task")

    def halves(self):
        """(corrector update, predictor update), each `(ctx, x, t) -> (x, x_mean)`; a missing half keeps x."""
        correct = _keep if self.corrector is None else self.corrector.update
        if self.predictor is None:
            return correct, _keep
        consistent = self.pds is not None and self.pds.consistent
        return correct, self.predictor.consistent_update if consistent else self.predictor.update

    @torch.no_grad()
    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None,
                 dtype: torch.dtype = torch.float32) -> SampleResult:
        """`known` (inpainting / colorization): x_T carries the clean known part, which every update then gets
        back diffused to t (`KnownPart.after_update`); PDS restrict 'subspace' keeps M off it (M' = P M),
        'project' lets M act on the whole image. The result carries the known part exactly; `shape` and
        `dtype` are then known's."""
        self.check_task(known)
        if self.predictor is not None:
            self.predictor.check(sde)
        sde, N, eps = sde.discretised(self.steps, self.speed_up, self.eps)
        counted = CountingScore(score_fn)
        base = identity_if_none(preconditioner)
        M = base
        if known is not None:
            shape, dtype = tuple(known.y.shape), known.y.dtype
            if self.pds is not None and self.pds.restrict == "subspace" and not base.is_identity:
                M = RestrictedPreconditioner(base, known)
        ctx = StepContext(sde, counted, M, noise)
        halves = self.halves()
        x = initial_sample(sde, shape, base, noise, dtype)
        if known is not None:
            x = known.impose(x, known.y)  # score_sde: the clean known part at T, replaced after the first update
        x_mean = x
        for i, t in enumerate(sde.time_grid(N, eps, device=x.device)):
            vec_t = torch.full((shape[0],), float(t), device=x.device)
            for update in halves:
                x, x_mean = update(ctx, x, vec_t)
                if known is not None:  # after a missing half too (one draw), as score_sde's loop does
                    x, x_mean = known.after_update(sde, vec_t, noise, x, x_mean)
            check_finite(x, i, N, self.check_finite_every)
        x = x_mean if self.denoise else x
        return SampleResult(x if known is None else known.impose(x, known.y), counted.calls)


def _keep(ctx, x, t):
    """The update of a missing half: x unchanged, and its own noise-free mean."""
    return x, x
