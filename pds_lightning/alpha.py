"""Preconditioner strength alpha chosen for the step budget (`alpha: auto`).

Method: fit a Gaussian surrogate of the data, N(mean, F^-1 diag(lam) F) per channel,
from ImageStatistics (mean image; lam(k) = (power_mean(k) - |fft2(mean)(k)|^2) / (H W), the variance of
Fourier mode k). This *stationary* approximation keeps the exact second moment per frequency but drops
the correlations between frequencies a non-stationary image set has. For the surrogate the score is
linear and diagonal in Fourier, and so is the frequency filter R, so every PC update maps each mode
independently, x_k <- c_k x_k + b_k mu_k + s_k z_k: the output law is Gaussian with per-mode variance v_k
and mean gamma_k mu_k, propagated in closed form (`pc_output_moments`). Its W2 distance to the surrogate
is the predicted error; the best candidate (vanilla included) is the choice.

Approximations, besides the surrogate itself:
- The Langevin step uses expected norms, step = 2 a_t snr^2 E||M z||^2 / E||M M^T score||^2, what the
  per-sample (and batch-mean) norms concentrate to (relative spread ~ 1 / sqrt(C H W)).
- The space filter S is not diagonal in Fourier. M M^T = C S^2 C is replaced by mean(S^2) R^2 per channel,
  the closest circulant operator (the Fourier-diagonal part of diag(S^2)). It is exact when S is constant,
  which it is for stationary data (sq_mean constant), and otherwise a uniform rescaling of the steps.
- Above `max_modes` Fourier modes the modes are pooled into cells of nearly equal (lam, statistic),
  each evolved once with its multiplicity (relative error of the W2 about 1e-3, tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from pds_lightning.preconditioner import filter_from_statistic
from pds_lightning.sampling.correctors import LangevinCorrector
from pds_lightning.sde import SDE, resolve_steps

#: Default candidates: None is vanilla (no preconditioning); the official default 5 is included.
DEFAULT_CANDIDATES: tuple[float | None, ...] = (None, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0,
                                                 15.0, 20.0, 30.0, 50.0, 100.0)
PREDICTORS = ("reverse_diffusion", "euler_maruyama")
CORRECTORS = ("langevin", "ald", "none")


@dataclass
class GaussianSurrogate:
    """Stationary Gaussian model of the data in model space: mode variances `lam` and mean image, [C, H, W]."""

    lam: Tensor
    mean: Tensor

    @classmethod
    def from_statistics(cls, statistics, centered: bool = False, floor: float = 1e-10) -> "GaussianSurrogate":
        """lam(k) = (power_mean(k) - |fft2(mean)(k)|^2) / (H W), floored at floor * max(lam) (no mode is exactly
        deterministic). `centered`: the model sees 2 x - 1, so the mean maps and lam scales by 4."""
        if getattr(statistics, "count", 0) <= 0:
            raise ValueError("alpha: auto needs data statistics with count > 0; compute them (ImageStatistics) "
                             "or give a number for alpha")
        power = statistics.power_mean.to(torch.float64)
        mean = statistics.mean.to(torch.float64)
        H, W = power.shape[-2:]
        lam = (power - torch.fft.fft2(mean).abs().square()) / (H * W)
        lam = lam.clamp_min(floor * float(lam.max().clamp_min(1e-300)))
        if centered:
            return cls(4.0 * lam, 2.0 * mean - 1.0)
        return cls(lam, mean)


@dataclass
class AlphaChoice:
    """The chosen alpha (None: vanilla), its predicted W2 per pixel (data units [0, 1]) and every candidate's."""

    alpha: float | None
    predicted_w2: float
    table: dict = field(default_factory=dict)  # {"vanilla" or alpha: predicted W2}
    n_steps: int = 0

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "predicted_w2": self.predicted_w2, "n_steps": self.n_steps,
                "table": {str(k): v for k, v in self.table.items()}}


def mode_gains(statistics, preconditioner: str, candidates: Sequence[float | None]) -> Tensor:
    """Fourier-diagonal part of M M^T per candidate, [A, C, H, W] float64 (ones for vanilla).

    Frequency filter: R^2 exactly. Space filter: mean(S^2) per channel (closest circulant; see module doc).
    """
    C, H, W = statistics.power_mean.shape
    freq = statistics.freq_statistic() if preconditioner in ("freq", "both") else None
    space = statistics.space_statistic() if preconditioner in ("space", "both") else None
    gains = []
    for alpha in candidates:
        g = torch.ones(C, H, W, dtype=torch.float64)
        if alpha is not None:
            if freq is not None:
                g = g * filter_from_statistic(freq, alpha).to(torch.float64).square()
            if space is not None:
                s2 = filter_from_statistic(space, alpha).to(torch.float64).square()
                g = g * s2.mean(dim=(-2, -1), keepdim=True)
        gains.append(g)
    return torch.stack(gains)


@dataclass
class Modes:
    """Independent Fourier modes (or pooled cells of them): variance, multiplicity, summed |mu_k|^2, gains [A, K]."""

    lam: Tensor
    count: Tensor
    mean_sq: Tensor
    gain: Tensor

    @classmethod
    def from_fields(cls, lam: Tensor, mean: Tensor, gains: Tensor, max_modes: int = 8192,
                    resolution: float = 0.01) -> "Modes":
        """All C H W modes of the unitary DFT, pooled into cells when there are more than `max_modes`.

        Cells group modes whose log lam and log gain (per candidate) agree to within `resolution`; inside
        a cell lam and the gains are averaged (multiplicity-weighted) and |mu_k|^2 is summed.
        """
        H, W = lam.shape[-2:]
        mean_sq = torch.fft.fft2(mean).abs().square().flatten() / (H * W)
        lam, gains = lam.flatten(), gains.flatten(1)
        ones = torch.ones_like(lam)
        if lam.numel() <= max_modes:
            return cls(lam, ones, mean_sq, gains)
        keys = torch.cat([lam.log()[None], gains.log()]) / resolution
        cells, inverse = torch.unique(keys.round().to(torch.int64), dim=1, return_inverse=True)
        K = cells.shape[1]
        pool = lambda v: torch.zeros(v.shape[:-1] + (K,), dtype=v.dtype).index_add_(-1, inverse, v)
        count = pool(ones)
        return cls(pool(lam) / count, count, pool(mean_sq), pool(gains) / count)


def _step_schedule(sde: SDE, settings) -> dict[str, Tensor]:
    """Per-step scalars of the sampler, float64 [N], read off the SDE with a unit input (as the sampler's
    float32 grid): a_t, s_t of the marginal, predictor (phi, G^2) with f = phi x, corrector a_t."""
    N, eps = resolve_steps(sde.N, sde.default_eps, n_steps=settings.n_steps, speed_up=settings.speed_up,
                           eps=settings.eps)
    sde = sde if N == sde.N else sde.with_num_scales(N)
    t = sde.time_grid(N, eps)
    ones = torch.ones(N, 1, 1, 1)
    a, s = sde.marginal_prob(ones, t)
    if settings.predictor == "reverse_diffusion":
        f, G = sde.discretize(ones, t)
        phi, G2 = f.flatten(), G.square()
    else:  # euler_maruyama: x_mean = x + M M^T (f - g^2 score) (-1/N), noise g sqrt(1/N)
        drift, g = sde.sde(ones, t)
        phi, G2 = drift.flatten() / N, g.square() / N
    corrector_a = LangevinCorrector(sde, None, None, settings.snr, 1).alpha(t, ones)
    as64 = lambda v: v.flatten().to(torch.float64)
    return {"a": as64(a.flatten()), "s": as64(s), "phi": as64(phi), "G2": as64(G2),
            "corrector_a": as64(corrector_a), "prior": torch.tensor(float(sde.prior_sampling(torch.ones(1))))}


def pc_output_moments(modes: Modes, sde: SDE, settings) -> tuple[Tensor, Tensor]:
    """Exact output moments of the PC sampler on the Gaussian model of `modes`, per candidate and mode.

    Returns (v, gamma), each [A, K]: the output's variance per mode and its mean gamma * mu_k. Updates
    (d = 1 / (a_t^2 lam + s_t^2), score = -d (x - a_t mu), gain = M M^T per mode):
      Langevin: x <- (1 - step gain d) x + step gain d a_t mu + sqrt(2 step) M z
      predictor: x_mean = (1 - gain (phi + G^2 d)) x + gain G^2 d a_t mu, x = x_mean + G M z.
    """
    if settings.predictor not in PREDICTORS:
        raise ValueError(f"alpha: auto models the predictors {PREDICTORS}, not {settings.predictor!r}; "
                         "give alpha a number")
    if settings.corrector not in CORRECTORS:
        raise ValueError(f"alpha: auto models the correctors {CORRECTORS}, not {settings.corrector!r}; "
                         "give alpha a number")
    sched = _step_schedule(sde, settings)
    lam, gain = modes.lam, modes.gain
    noise_power = (gain * modes.count).sum(-1)  # E||M z||^2 per candidate
    v = sched["prior"] ** 2 * gain
    gamma = torch.zeros_like(gain)
    v_mean = v
    snr2 = float(settings.snr) ** 2
    n_corr = int(settings.n_corrector_steps) if settings.corrector != "none" else 0
    for i in range(len(sched["a"])):
        a, s = float(sched["a"][i]), float(sched["s"][i])
        d = 1.0 / (a * a * lam + s * s)
        gd = gain * d
        for _ in range(n_corr):
            if settings.corrector == "langevin":
                g_power = (gd.square() * (v * modes.count + (gamma - a).square() * modes.mean_sq)).sum(-1)
                step = (2 * float(sched["corrector_a"][i]) * snr2 * noise_power / g_power)[:, None]
            else:  # ald: step = 2 a_t (snr s_t)^2
                step = torch.full_like(noise_power, 2 * float(sched["corrector_a"][i]) * snr2 * s * s)[:, None]
            c = 1 - step * gd
            v = c.square() * v + 2 * step * gain
            gamma = c * gamma + step * gd * a
        G2, phi = float(sched["G2"][i]), float(sched["phi"][i])
        c = 1 - gain * phi - G2 * gd
        v_mean = c.square() * v
        v = v_mean + G2 * gain
        gamma = c * gamma + G2 * gd * a
    return (v_mean if settings.denoise else v), gamma


def predicted_w2(modes: Modes, v: Tensor, gamma: Tensor, num_pixels: int, scale: float = 1.0) -> Tensor:
    """W2 per pixel between the output law and the surrogate, [A]; `scale` maps model units to data units.

    W2^2 = sum_k |gamma_k - 1|^2 |mu_k|^2 + sum_k (sqrt v_k - sqrt lam_k)^2 (commuting covariances)."""
    w2_sq = ((v.sqrt() - modes.lam.sqrt()).square() * modes.count + (gamma - 1).square() * modes.mean_sq).sum(-1)
    return (w2_sq / num_pixels).sqrt() / scale


def choose_alpha(statistics, sde: SDE, settings, candidates: Sequence[float | None] = DEFAULT_CANDIDATES,
                 centered: bool = False, max_modes: int = 8192) -> AlphaChoice:
    """The candidate alpha (None = vanilla, always included) with the lowest predicted output W2.

    `settings`: a SamplerSettings (predictor, corrector, snr, n_corrector_steps, steps, eps, denoise,
    preconditioner); `statistics`: ImageStatistics of the data in [0, 1]; `centered`: the model's space.
    """
    if getattr(settings, "method", "pc") != "pc":
        raise ValueError("alpha: auto applies to the PC sampler (method: pc) only")
    if settings.preconditioner == "none":
        raise ValueError("alpha: auto chooses the strength of a PDS preconditioner; set preconditioner to "
                         "'freq', 'space' or 'both'")
    candidates = [None] + [float(a) for a in candidates if a is not None]
    candidates = list(dict.fromkeys(candidates))
    surrogate = GaussianSurrogate.from_statistics(statistics, centered=centered)
    gains = mode_gains(statistics, settings.preconditioner, candidates)
    modes = Modes.from_fields(surrogate.lam, surrogate.mean, gains, max_modes=max_modes)
    v, gamma = pc_output_moments(modes, sde, settings)
    w2 = predicted_w2(modes, v, gamma, surrogate.lam.numel(), scale=2.0 if centered else 1.0)
    w2 = torch.where(torch.isfinite(w2), w2, torch.full_like(w2, math.inf))
    best = int(torch.argmin(w2))
    N, _ = resolve_steps(sde.N, sde.default_eps, n_steps=settings.n_steps, speed_up=settings.speed_up,
                         eps=settings.eps)
    table = {("vanilla" if a is None else a): float(w) for a, w in zip(candidates, w2.tolist())}
    return AlphaChoice(candidates[best], float(w2[best]), table, N)
