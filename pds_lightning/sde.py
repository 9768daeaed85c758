"""Forward SDEs of score-based models (VE, VP, sub-VP) with score_sde semantics.

Each SDE gives its continuous drift/diffusion, the Gaussian marginal of x(t) given x(0), the prior
x(T) from a standard-normal draw, and the discretisation the samplers step with (SMLD for VE, DDPM for
VP, Euler for sub-VP). Discrete tables are float32 like the official code and are cast to the input's
device and dtype where used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


#: Most steps (noise levels) an SDE's discretisation or a sampling run may have. Each step costs table entries
#: (VP: five float32 tables, 20 bytes a step; the time grid 4 more) and at least one network evaluation, so this
#: bound holds the tables to ~240 MB and is far above any useful run (score_sde uses at most 2000 steps; 10**7
#: evaluations of even a tiny network take days), while 10**8 steps grew past 20 GB before a kernel kill.
MAX_STEPS = 10**7


def check_step_count(count: float, setting: str, fix: str | None = None) -> None:
    """ValueError naming `setting` (and `fix`, default: lower it) when `count` steps exceed MAX_STEPS; called
    before any table is allocated."""
    if count > MAX_STEPS:
        raise ValueError(f"{setting} gives {count:,.0f} steps, more than the {MAX_STEPS:,} a run may take (each step "
                         "adds to the SDE's tables and costs a network evaluation; score_sde uses at most 2000); "
                         f"{fix or 'lower ' + setting}")


def per_sample(v: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1] so a per-sample scalar multiplies an image batch."""
    return v[:, None, None, None]


def resolve_steps(num_scales: int, default_eps: float, steps: int | None = None,
                  speed_up: float = 1.0, eps: float | None = None) -> tuple[int, float]:
    """Number of steps N and end time eps of a sampling run.

    Official rule: N = int(num_scales / speed_up), eps = default_eps * speed_up. An explicit `steps`
    is the same rule with speed_up = num_scales / steps; an explicit `eps` overrides the scaled one.
    The values themselves (steps >= 1, speed_up > 0, not both) are checked by the sampler component; this
    checks only what depends on the SDE.
    """
    if steps is not None:
        check_step_count(int(steps), "steps")
        N, factor = int(steps), num_scales / int(steps)
    else:
        check_step_count(num_scales / speed_up, f"speed_up={speed_up} (int({num_scales} / {speed_up}))",
                         f"raise speed_up to at least {num_scales / MAX_STEPS:.4g}")
        N, factor = int(num_scales / speed_up), float(speed_up)
        if N < 1:
            raise ValueError(f"speed_up={speed_up} leaves int({num_scales} / {speed_up}) = {N} steps; "
                             f"use speed_up <= {num_scales}")
    eps = default_eps * factor if eps is None else float(eps)
    if not 0 < eps < 1:
        raise ValueError(f"sampling end time eps must lie in (0, 1), got {eps}; lower speed_up or set eps")
    return N, eps


class SDE:
    """Base class: dx = f(x, t) dt + g(t) dw on t in [0, T], discretised into N levels."""

    T = 1.0
    default_eps = 1e-3
    #: Whether `discretize` is the DDPM chain, whose alphas 1 - beta_i must be > 0 (see `min_ddpm_steps`).
    ddpm_discretisation = False

    def __init__(self, num_scales: int):
        if int(num_scales) < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        check_step_count(int(num_scales), "num_scales")
        self.N = int(num_scales)

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def marginal_prob(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def prior_sampling(self, z: Tensor) -> Tensor:
        """x_T from a standard-normal (possibly preconditioned) draw z."""
        return z

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) per sample [B]: the prior density the likelihood ends at."""
        D = z[0].numel()
        return -0.5 * D * math.log(2 * math.pi) - 0.5 * z.flatten(1).square().sum(1)

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Euler discretisation x_{i+1} = x_i + f + G z with dt = 1/N."""
        dt = 1.0 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        return ReverseSDE(self, score_fn, probability_flow)

    def time_grid(self, n: int, eps: float, device=None) -> Tensor:
        """Sampling times T = t_0 > ... > t_{n-1} = eps."""
        return torch.linspace(self.T, eps, n, device=device)

    def timestep(self, t: Tensor) -> Tensor:
        """Discrete level index of t (truncation, as the official code)."""
        return (t * (self.N - 1) / self.T).long()

    def with_num_scales(self, num_scales: int) -> "SDE":
        """The same SDE discretised into `num_scales` levels (what speed_up builds)."""
        raise NotImplementedError

    def discretised(self, steps: int | None = None, speed_up: float = 1.0,
                    eps: float | None = None) -> tuple["SDE", int, float]:
        """(this SDE re-discretised into N levels, N, eps) for a sampling run (`resolve_steps`'s rule)."""
        N, eps = resolve_steps(self.N, self.default_eps, steps=steps, speed_up=speed_up, eps=eps)
        return (self if N == self.N else self.with_num_scales(N)), N, eps

    def ddpm_alpha(self, t: Tensor, like: Tensor) -> Tensor:
        """a_t of the Langevin step size 2 a_t (snr ||z|| / ||score||)^2: 1 here (VE), DDPM alpha_i for VP."""
        return torch.ones(t.shape, device=like.device, dtype=like.dtype)

    def min_ddpm_steps(self) -> int:
        """Smallest step count N whose DDPM alphas 1 - beta_i are all > 0: 1 here (no DDPM tables)."""
        return 1


class ReverseSDE:
    """Reverse-time SDE (or probability-flow ODE) of `forward` given a score function."""

    def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.N = forward.N
        self.T = forward.T
        # The ODE carries half the score term and no noise.
        self._weight = 0.5 if probability_flow else 1.0

    def sde(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        drift, diffusion = self.forward.sde(x, t)
        drift = drift - per_sample(diffusion) ** 2 * self.score_fn(x, t) * self._weight
        return drift, torch.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        f, G = self.forward.discretize(x, t)
        rev_f = f - per_sample(G) ** 2 * self.score_fn(x, t) * self._weight
        return rev_f, torch.zeros_like(G) if self.probability_flow else G


class VESDE(SDE):
    """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t, no drift."""

    default_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, num_scales: int = 1000):
        super().__init__(num_scales)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), self.N))

    def with_num_scales(self, num_scales: int) -> "VESDE":
        return VESDE(self.sigma_min, self.sigma_max, num_scales)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        diffusion = self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return torch.zeros_like(x), diffusion.to(x.dtype)

    def marginal_prob(self, x, t):
        return x, self.sigma(t).to(x.dtype)

    def prior_sampling(self, z):
        return z * self.sigma_max

    def prior_logp(self, z):
        """log N(z; 0, sigma_max^2 I) per sample [B]."""
        D = z[0].numel()
        return (-0.5 * D * math.log(2 * math.pi * self.sigma_max ** 2)
                - 0.5 * z.flatten(1).square().sum(1) / self.sigma_max ** 2)

    def sigma_and_prev(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(sigma_i, sigma_{i-1}) of the SMLD levels at t, [B] each, in like's device and dtype; sigma_{-1} = 0."""
        i = self.timestep(t)
        sigmas = self.discrete_sigmas.to(device=like.device, dtype=like.dtype)
        sigma = sigmas[i]
        return sigma, torch.where(i == 0, torch.zeros_like(sigma), sigmas[(i - 1).clamp(min=0)])

    def discretize(self, x, t):
        """SMLD: x_{i} = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z, sigma_{-1} = 0."""
        sigma, sigma_prev = self.sigma_and_prev(t, x)
        return torch.zeros_like(x), torch.sqrt(sigma ** 2 - sigma_prev ** 2)

    # ---- sigma-space map (EDM convention x = s(t) (x0 + sigma(t) n)) --------------------------------
    def scale_of_t(self, t: Tensor) -> Tensor:
        """s(t) = 1: VE adds noise without shrinking the data."""
        return torch.ones_like(t)

    def sigma_of_t(self, t: Tensor) -> Tensor:
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t, the marginal std itself."""
        return self.sigma(t)

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of sigma_of_t: t = log(sigma / sigma_min) / log(sigma_max / sigma_min)."""
        return torch.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class VPSDE(SDE):
    """Variance preserving: beta(t) = beta_min + t (beta_max - beta_min), drift -beta x / 2."""

    default_eps = 1e-3
    ddpm_discretisation = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000):
        super().__init__(num_scales)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)
        N = self.N
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)

    def with_num_scales(self, num_scales: int) -> "VPSDE":
        return type(self)(self.beta_0, self.beta_1, num_scales)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def _log_mean_coeff(self, t: Tensor) -> Tensor:
        return -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def sde(self, x, t):
        beta_t = self.beta(t).to(x.dtype)
        return -0.5 * per_sample(beta_t) * x, torch.sqrt(beta_t)

    def marginal_prob(self, x, t):
        log_mean_coeff = self._log_mean_coeff(t).to(x.dtype)
        std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coeff))
        return per_sample(torch.exp(log_mean_coeff)) * x, std

    def ddpm_alpha(self, t: Tensor, like: Tensor) -> Tensor:
        """The DDPM alpha_i = 1 - beta_i at t's level (the official Langevin step uses it for sub-VP too)."""
        return self.alphas.to(device=like.device, dtype=like.dtype)[self.timestep(t)]

    def min_ddpm_steps(self) -> int:
        """Smallest N with beta_max / N < 1: below it the last DDPM alpha 1 - beta_max / N is <= 0, and the
        DDPM step, the Langevin/ALD a_t and ancestral sampling take its square root or divide by it."""
        return math.floor(self.beta_1) + 1

    def discretize(self, x, t):
        """DDPM: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z."""
        beta = self.discrete_betas.to(device=x.device, dtype=x.dtype)[self.timestep(t)]
        return per_sample(torch.sqrt(self.ddpm_alpha(t, x))) * x - x, torch.sqrt(beta)

    # ---- sigma-space map (EDM convention x = s(t) (x0 + sigma(t) n)) --------------------------------
    # The marginal is x_t = m(t) x0 + std(t) n with m = exp(lmc), lmc = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2.
    # Writing it as s (x0 + sigma n) gives s = m and sigma = std / m. VP: std^2 = 1 - m^2, so
    # sigma^2 = 1/m^2 - 1 = expm1(-2 lmc). The inverse solves lmc(t) = -L, a quadratic in t:
    # (beta_1 - beta_0) t^2 / 4 + beta_0 t / 2 - L = 0, whose positive root in the cancellation-free form is
    # t = 2 L / (beta_0 / 2 + sqrt(beta_0^2 / 4 + (beta_1 - beta_0) L)) (also right for beta_1 = beta_0).
    def scale_of_t(self, t: Tensor) -> Tensor:
        """s(t) = exp(lmc(t)), the mean coefficient of the marginal."""
        return torch.exp(self._log_mean_coeff(t))

    def sigma_of_t(self, t: Tensor) -> Tensor:
        """sigma(t) = sqrt(1 / s^2 - 1) = sqrt(expm1(-2 lmc))."""
        return torch.sqrt(torch.expm1(-2.0 * self._log_mean_coeff(t)))

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of sigma_of_t: L = -lmc = log(1 + sigma^2) / 2, then the quadratic's positive root."""
        return self._t_of_neg_log_mean(0.5 * torch.log1p(sigma ** 2))

    def _t_of_neg_log_mean(self, L: Tensor) -> Tensor:
        """The t >= 0 with lmc(t) = -L."""
        b0, d = self.beta_0, self.beta_1 - self.beta_0
        return 2.0 * L / (0.5 * b0 + torch.sqrt(0.25 * b0 ** 2 + d * L))


class SubVPSDE(VPSDE):
    """Sub-VP: VP drift with diffusion beta(t) (1 - exp(-2 int beta)); Euler discretisation.

    It keeps the VP discrete tables because the Langevin and ALD correctors read `alphas` for it too: their
    a_t on sub-VP is the VP's DDPM alpha_i = 1 - beta_i, as in score_sde (there is no sub-VP DDPM chain).
    """

    ddpm_discretisation = False

    def sde(self, x, t):
        beta_t = self.beta(t).to(x.dtype)
        t = t.to(x.dtype)
        discount = 1.0 - torch.exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t ** 2)
        return -0.5 * per_sample(beta_t) * x, torch.sqrt(beta_t * discount)

    def marginal_prob(self, x, t):
        log_mean_coeff = self._log_mean_coeff(t).to(x.dtype)
        return per_sample(torch.exp(log_mean_coeff)) * x, 1.0 - torch.exp(2.0 * log_mean_coeff)

    discretize = SDE.discretize

    # ---- sigma-space map: same s = exp(lmc) as VP; the marginal std is 1 - exp(2 lmc) = 1 - s^2, so
    # sigma = (1 - s^2) / s = exp(-lmc) - exp(lmc) = 2 sinh(-lmc), and the inverse is -lmc = asinh(sigma / 2).
    def sigma_of_t(self, t: Tensor) -> Tensor:
        """sigma(t) = 2 sinh(-lmc(t))."""
        return 2.0 * torch.sinh(-self._log_mean_coeff(t))

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """Inverse of sigma_of_t: L = asinh(sigma / 2), then VP's quadratic in t."""
        return self._t_of_neg_log_mean(torch.asinh(0.5 * sigma))
