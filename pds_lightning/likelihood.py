"""Bits/dim through the probability-flow ODE (score_sde's likelihood semantics).

log p_eps(x) = log p_T(x_T) + int_eps^T div f(x_t, t) dt along the ODE dx/dt = f = f_sde - (g^2/2) score,
with p_T the SDE's prior. div f is estimated by Hutchinson, v^T (df/dx) v with one v per image held fixed
over the path (Rademacher or Gaussian), or computed exactly (one vector-Jacobian product per dimension:
tiny images only). Images in [0, 1] are uniformly dequantised, (255 x + u) / 256, and mapped to model space;
bits/dim = -log p / (D ln 2) + offset, offset = 8 - log2(width of the model range): 8 for [0, 1] data, 7 for
[-1, 1] (score_sde's `7 - inverse_scaler(-1)`).
Solvers: fixed-step 'rk4' / 'heun' (deterministic, the same number of network calls on every rank) and
adaptive 'dopri5' (torchdiffeq, rtol / atol; the step count depends on the batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pds_lightning.images import to_model_space, to_unit_range
from pds_lightning.sde import SDE, check_step_count

#: Divergence estimators: Hutchinson with Rademacher or Gaussian probes, or the exact trace.
ESTIMATORS = ("rademacher", "gaussian", "exact")
#: ODE solvers: fixed-step Runge-Kutta 4 and Heun, and torchdiffeq's adaptive Dormand-Prince.
SOLVERS = ("rk4", "heun", "dopri5")
#: score_sde's likelihood start time (its `eps` of get_likelihood_fn).
LIKELIHOOD_EPS = 1e-5


@dataclass
class LikelihoodSettings:
    """How bits/dim are computed. `val_images`: at every validation, the first images of each rank's first
    validation batch scored as val/bpd (0: none; at most the batch size)."""

    estimator: str = "rademacher"
    solver: str = "rk4"
    n_steps: int = 100
    rtol: float = 1e-5
    atol: float = 1e-5
    eps: float = LIKELIHOOD_EPS
    dequantize: bool = True
    seed: int = 0
    val_images: int = 0

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"unknown likelihood estimator {self.estimator!r}; choose one of {ESTIMATORS}")
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown likelihood solver {self.solver!r}; choose one of {SOLVERS}")
        if self.n_steps < 1:
            raise ValueError(f"likelihood n_steps must be >= 1, got {self.n_steps}")
        check_step_count(self.n_steps, "likelihood n_steps")  # its time grid is a table of n_steps + 1 times
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"rtol and atol must be > 0, got {self.rtol}, {self.atol}")
        if not 0 < self.eps < 1:
            raise ValueError(f"likelihood eps must lie in (0, 1), got {self.eps}; score_sde uses {LIKELIHOOD_EPS}")
        if self.val_images < 0:
            raise ValueError(f"val_images must be >= 0, got {self.val_images}")


def bits_offset(centered: bool) -> float:
    """8 bits for a 256-level image in [0, 1], minus log2 of the model range's width (2 when centered)."""
    return 8.0 - (1.0 if centered else 0.0)


def dequantize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation of [0, 1] images with 256 levels: (255 x + u) / 256, u ~ U[0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x * 255.0 + u) / 256.0


def probe(shape, estimator: str, generator: torch.Generator | None, device, dtype) -> Tensor | None:
    """Hutchinson probe v with E[v v^T] = I (None for the exact trace)."""
    if estimator == "exact":
        return None
    v = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return v.sign() if estimator == "rademacher" else v


def drift_and_divergence(sde: SDE, score_fn, x: Tensor, t: Tensor, v: Tensor | None) -> tuple[Tensor, Tensor]:
    """(f, div f) of the probability-flow ODE at (x, t); div by v^T J v, or exactly when v is None."""
    flow = sde.reverse(score_fn, probability_flow=True)
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = flow.sde(x, t)[0]
        if v is not None:
            vjp = torch.autograd.grad(f, x, v)[0]
            return f.detach(), (vjp * v).flatten(1).sum(1)
        flat = f.flatten(1)
        diag = [torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
                for i in range(flat.shape[1])]
        return f.detach(), torch.stack(diag, 1).sum(1)


def _fixed_step(rhs, x: Tensor, times: Tensor, solver: str) -> tuple[Tensor, Tensor]:
    """RK4 or Heun over the grid `times` of the joint state (x, delta logp)."""
    delta = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    for t0, t1 in zip(times[:-1].tolist(), times[1:].tolist()):
        h = t1 - t0
        k1 = rhs(t0, x)
        if solver == "heun":
            k2 = rhs(t1, x + h * k1[0])
            x, delta = x + h / 2 * (k1[0] + k2[0]), delta + h / 2 * (k1[1] + k2[1])
            continue
        k2 = rhs(t0 + h / 2, x + h / 2 * k1[0])
        k3 = rhs(t0 + h / 2, x + h / 2 * k2[0])
        k4 = rhs(t1, x + h * k3[0])
        x = x + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        delta = delta + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return x, delta


def log_likelihood(score_fn, sde: SDE, x: Tensor, settings: LikelihoodSettings | None = None,
                   generator: torch.Generator | None = None, prior_logp=None) -> tuple[Tensor, int]:
    """(log p_eps(x) in nats per image [B], network calls) for model-space images x, via the ODE.

    `prior_logp(x_T)`: the density the ODE ends at, the SDE's prior by default (score_sde).
    """
    prior_logp = sde.prior_logp if prior_logp is None else prior_logp
    settings = settings or LikelihoodSettings()
    calls = [0]
    # Lightning's test / validate loops run under inference mode; the divergence needs autograd.
    with torch.inference_mode(False):
        x = x.clone()
        v = probe(x.shape, settings.estimator, generator, x.device, x.dtype)

        def rhs(t: float, state: Tensor) -> tuple[Tensor, Tensor]:
            calls[0] += 1
            vec_t = torch.full((state.shape[0],), float(t), device=state.device, dtype=state.dtype)
            return drift_and_divergence(sde, score_fn, state, vec_t, v)

        if settings.solver == "dopri5":
            from torchdiffeq import odeint

            def joint(t, state):
                f, div = rhs(float(t), state[0])
                return f, div

            span = torch.tensor([settings.eps, sde.T], device=x.device, dtype=x.dtype)
            zero = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
            xs, deltas = odeint(joint, (x, zero), span, rtol=settings.rtol, atol=settings.atol, method="dopri5")
            x_T, delta = xs[-1], deltas[-1]
        else:
            times = torch.linspace(settings.eps, sde.T, settings.n_steps + 1, dtype=torch.float64)
            x_T, delta = _fixed_step(rhs, x, times, settings.solver)
        return (prior_logp(x_T) + delta).detach(), calls[0]


def bits_per_dim(score_fn, sde: SDE, images: Tensor, centered: bool, settings: LikelihoodSettings | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, int]:
    """(bits/dim per image [B], network calls) of [0, 1] images: dequantised, in model space, score_sde's offset."""
    settings = settings or LikelihoodSettings()
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"bits/dim takes images in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]")
    x = dequantize(images, generator) if settings.dequantize else images
    logp, calls = log_likelihood(score_fn, sde, to_model_space(x, centered), settings, generator)
    D = images[0].numel()
    return -logp / (D * math.log(2.0)) + bits_offset(centered), calls


def bits_per_dim_of_batch(score_fn, sde: SDE, x: Tensor, centered: bool, settings: LikelihoodSettings,
                          rank: int = 0, batch_idx: int = 0) -> Tensor:
    """Bits/dim [B] of a batch of model-space images, as the test / validation steps score them: the
    dequantisation and probes come from a generator seeded by (settings.seed, rank, batch_idx) alone, so a
    batch's value does not depend on what ran before it."""
    seed = (settings.seed * 1_000_003 + rank) * 1_000_003 + batch_idx
    generator = torch.Generator(device=x.device).manual_seed(seed)
    images = to_unit_range(x, centered).clamp(0.0, 1.0)
    return bits_per_dim(score_fn, sde, images, centered, settings, generator)[0]
