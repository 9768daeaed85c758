"""Samplers with one signature: `sampler(score_fn, sde, shape, *, noise, preconditioner=None, **settings)`.

`pc_sampler` runs predictor-corrector sampling of the reverse SDE (vanilla or PDS); `ode_sampler`
integrates the probability-flow ODE with Heun's method. Both return `SampleResult(x, nfe)`, nfe being the
number of score evaluations actually made.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling.correctors import CORRECTORS
from pds_lightning.sampling.known import KnownPart, RestrictedPreconditioner
from pds_lightning.sampling.predictors import predictor_class
from pds_lightning.sampling.base import SampleResult
from pds_lightning.sampling.pds import RESTRICT_CHOICES
from pds_lightning.sde import SDE



class NonFiniteSampleError(RuntimeError):
    """The sample became nan/inf during sampling; `step` is the 0-based step index where it was seen."""

    def __init__(self, step: int, n_steps: int):
        self.step = step
        super().__init__(f"non-finite values (nan/inf) in the sample at step {step} of {n_steps}; the "
                         "preconditioned steps are too large for this step budget: lower alpha (towards "
                         "vanilla), lower speed_up (more steps), or reduce snr. (Accuracy, separately: the "
                         "PDS Langevin corrector keeps the target p_t; the official PDS predictor does not, "
                         "pds_predictor: consistent does.)")


class _CountingScore:
    """Wraps a score function to count network evaluations; the score comes back in x's dtype, so a network
    run under autocast (bf16 output) never lowers the precision of the sampler's state x."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score_fn(x, t).to(x.dtype)


def _check_finite(x: Tensor, step: int, n_steps: int, every: int) -> None:
    if every and ((step + 1) % every == 0 or step == n_steps - 1) and not torch.isfinite(x).all():
        raise NonFiniteSampleError(step, n_steps)


def identity_if_none(preconditioner: Preconditioner | None) -> Preconditioner:
    """The preconditioner, or the identity (no filters: M = I, vanilla sampling) when there is none."""
    return Preconditioner() if preconditioner is None else preconditioner


def initial_sample(sde: SDE, shape, preconditioner: Preconditioner, noise, dtype) -> Tensor:
    """x_T = prior(M z) from one standard-normal draw z of shape [B, C, H, W]."""
    if len(shape) != 4:
        raise ValueError(f"shape must be [B, C, H, W], got {tuple(shape)}")
    return sde.prior_sampling(preconditioner.noise(noise.noise(torch.zeros(shape, device=noise.device,
                                                                          dtype=dtype))))


@torch.no_grad()
def pc_sampler(score_fn, sde: SDE, shape, *, noise, preconditioner=None, predictor: str = "reverse_diffusion",
               corrector: str = "langevin", snr: float = 0.16, n_corrector_steps: int = 1,
               n_steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
               denoise: bool = True, step_size: str = "sample", check_finite_every: int = 0,
               pds_predictor: str = "official", dtype: torch.dtype = torch.float32,
               known: KnownPart | None = None, restrict: str = "project") -> SampleResult:
    """Predictor-corrector sampling: per step t_i of linspace(T, eps, N), corrector then predictor.

    `pds_predictor`: 'official' (M M^T on the whole drift; does not keep p_t) or 'consistent' (keeps p_t).
    `known` (inpainting / colorization): x_T carries the clean known part, which every update then gets back
    diffused to t (`KnownPart.after_update`); `restrict` 'subspace' keeps M off it (M' = P M), 'project'
    lets M act on the whole image. The result carries the known part exactly. `shape` is then known's.
    """
    sde, N, eps = sde.discretised(n_steps, speed_up, eps)
    counted = _CountingScore(score_fn)
    base = identity_if_none(preconditioner)
    preconditioner = base
    if known is not None:
        if restrict not in RESTRICT_CHOICES:
            raise ValueError(f"unknown restrict {restrict!r}; choose 'project' (M on the whole image, known part "
                             "re-imposed after each update) or 'subspace' (M' = P M on the unknown part only)")
        shape, dtype = tuple(known.y.shape), known.y.dtype
        if restrict == "subspace" and not base.is_identity:
            preconditioner = RestrictedPreconditioner(base, known)
    predict = predictor_class(predictor, pds_predictor)(sde, counted, preconditioner, noise)
    correct = CORRECTORS[corrector](sde, counted, preconditioner, noise, snr, n_corrector_steps, step_size)
    x = initial_sample(sde, shape, base, noise, dtype)
    if known is not None:
        x = known.impose(x, known.y)  # score_sde: the clean known part at T, replaced after the first update
    x_mean = x
    for i, t in enumerate(sde.time_grid(N, eps, device=x.device)):
        vec_t = torch.full((shape[0],), float(t), device=x.device)
        for update in (correct.update, predict.update):
            x, x_mean = update(x, vec_t)
            if known is not None:
                x, x_mean = known.after_update(sde, vec_t, noise, x, x_mean)
        _check_finite(x, i, N, check_finite_every)
    x = x_mean if denoise else x
    return SampleResult(x if known is None else known.impose(x, known.y), counted.calls)


@torch.no_grad()
def ode_sampler(score_fn, sde: SDE, shape, *, noise, preconditioner=None, n_steps: int | None = None,
                speed_up: float = 1.0, eps: float | None = None, denoise: bool = True,
                check_finite_every: int = 0, dtype: torch.dtype = torch.float32) -> SampleResult:
    """Heun's method on the probability-flow ODE over N fixed steps from T to eps (2 NFE per step).

    `denoise` ends with one noise-free reverse-diffusion step at eps, as score_sde does (1 more NFE).
    """
    if preconditioner is not None and not preconditioner.is_identity:
        raise ValueError("the ODE sampler cannot use a PDS preconditioner: dx/dt = f - g^2/2 M M^T score is "
                         "not the model's probability-flow ODE (only the matching M-shaped noise of the "
                         "SDE keeps the marginals p_t), so the deterministic path would go elsewhere. Use "
                         "method 'pc' for PDS, or preconditioner 'none' with the ODE")
    sde, N, eps = sde.discretised(n_steps, speed_up, eps)
    counted = _CountingScore(score_fn)
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
        _check_finite(x, i, N, check_finite_every)
    if denoise:
        f, _ = sde.reverse(counted).discretize(x, torch.full((shape[0],), float(eps), device=x.device))
        x = x - f
    return SampleResult(x, counted.calls)


SAMPLERS = {"pc": pc_sampler, "ode": ode_sampler}
