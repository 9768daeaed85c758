"""PC: predictor-corrector sampling of the reverse SDE, vanilla or PDS, with the known-part hook of tasks."""

from __future__ import annotations

from pds_lightning.sampling.base import Sampler, check_budget, check_type
from pds_lightning.sampling.correctors import CorrectorComponent
from pds_lightning.sampling.pds import PDS
from pds_lightning.sampling.predictors import PredictorComponent, ReverseDiffusion
from pds_lightning.sampling.correctors import Langevin
from pds_lightning.sampling.samplers import pc_sampler
from pds_lightning.sde import SDE, resolve_steps


class PC(Sampler):
    """Per PC step t_i of linspace(T, eps, N): the corrector, then the predictor (score_sde's order).

    `pc_steps` N, or `speed_up` (N = int(num_scales / speed_up), eps = default_eps * speed_up); `eps` overrides
    the end time. `predictor` / `corrector`: None leaves that half out. `denoise`: return the last update's
    noise-free mean. `pds`: the PDS component, None is vanilla. Default: the official PDS paper's sampler
    without PDS (reverse diffusion + Langevin, snr 0.16) at the SDE's full step count.
    """

    def __init__(self, pc_steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                 predictor: PredictorComponent | None = ReverseDiffusion(),
                 corrector: CorrectorComponent | None = Langevin(), pds: PDS | None = None, denoise: bool = True,
                 name: str | None = None, guidance_scale: float = 0.0, check_finite_every: int = 0):
        super().__init__(name, guidance_scale, check_finite_every)
        check_budget(self.name, "pc_steps", pc_steps, speed_up, eps)
        if predictor is not None:
            check_type(self.name, "predictor", predictor, PredictorComponent, "a predictor component or None")
        if corrector is not None:
            check_type(self.name, "corrector", corrector, CorrectorComponent, "a corrector component or None")
        if pds is not None:
            check_type(self.name, "pds", pds, PDS, "a PDS component or None")
        check_type(self.name, "denoise", denoise, bool, "true or false")
        if predictor is None and corrector is None:
            raise ValueError(f"{self.name}: a PC sampler needs a predictor, a corrector or both")
        if pds is not None and pds.predictor == "consistent":
            if predictor is not None and not predictor.consistent_form:
                raise ValueError(f"{self.name}: PDS predictor 'consistent' exists for reverse_diffusion and "
                                 f"euler_maruyama, not {predictor.kind}; use PDS(predictor='official')")
        self.pc_steps, self.speed_up, self.eps = pc_steps, float(speed_up), eps
        self.predictor, self.corrector, self.pds, self.denoise = predictor, corrector, pds, denoise

    def steps(self, sde: SDE) -> tuple[int, float]:
        """(N, eps) on `sde`."""
        return resolve_steps(sde.N, sde.default_eps, n_steps=self.pc_steps, speed_up=self.speed_up, eps=self.eps)

    def nfe(self, sde: SDE) -> int:
        N, _ = self.steps(sde)
        return N * ((self.predictor is not None) + (0 if self.corrector is None else self.corrector.steps_per_level))

    def ddpm_table_users(self, sde: SDE) -> list[str]:
        """The updates that read `sde`'s DDPM alphas 1 - beta_i: the DDPM predictors on VP, and the Langevin /
        ALD correctors (a_t) on VP and sub-VP. Empty on VE."""
        users = []
        kind = None if self.predictor is None else self.predictor.kind
        if kind in ("reverse_diffusion", "ancestral_sampling") and sde.ddpm_discretisation:
            users.append(f"the {kind} predictor")
        if self.corrector is not None and sde.min_ddpm_steps() > 1:
            users.append(f"the {self.corrector.kind} corrector (a_t)")
        return users

    def check(self, sde: SDE) -> None:
        N, _ = self.steps(sde)
        users = self.ddpm_table_users(sde)
        n_min = sde.min_ddpm_steps()
        if users and N < n_min:
            raise ValueError(
                f"{type(sde).__name__} with beta_max {sde.beta_1:g} cannot be sampled in {N} steps by "
                f"{' and '.join(users)}: they read the DDPM alphas 1 - beta_i, which reach 1 - beta_max / N = "
                f"{1 - sde.beta_1 / N:.3g} <= 0 (square roots of negative numbers, division by zero). Use at "
                f"least {n_min} steps (pc_steps >= {n_min}, or speed_up <= {sde.N / n_min:.4g}), or predictor "
                "EulerMaruyama with corrector: null, which works at any step count")

    def __call__(self, score_fn, sde: SDE, shape, *, noise, preconditioner=None, known=None):
        corrector = self.corrector
        return pc_sampler(
            score_fn, sde, shape, noise=noise, preconditioner=preconditioner, known=known,
            restrict="project" if self.pds is None else self.pds.restrict,
            predictor="none" if self.predictor is None else self.predictor.kind,
            corrector="none" if corrector is None else corrector.kind,
            snr=0.16 if corrector is None else corrector.snr,
            n_corrector_steps=1 if corrector is None else corrector.steps_per_level,
            step_size=getattr(corrector, "step_size", "sample"), n_steps=self.pc_steps, speed_up=self.speed_up,
            eps=self.eps, denoise=self.denoise, check_finite_every=self.check_finite_every,
            pds_predictor="official" if self.pds is None else self.pds.predictor)
