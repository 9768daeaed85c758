"""Surrogate choice of the preconditioner strength alpha for the step budget (`PDS(alpha=Surrogate())`).

Pure maths on the data statistics (no sampler runs, no network calls). Method: fit a Gaussian surrogate of the data, N(mean, F^-1 diag(lam) F) per channel,
from ImageStatistics (mean image; lam(k) = (power_mean(k) - |fft2(mean)(k)|^2) / (H W), the variance of
Fourier mode k). This *stationary* approximation keeps the exact second moment per frequency but drops
the correlations between frequencies a non-stationary image set has. For the surrogate the score is
linear and diagonal in Fourier, and so is the frequency filter R, so every PC update maps each mode
independently, x_k <- c_k x_k + b_k mu_k + s_k z_k: the output law is Gaussian with per-mode variance v_k
and mean gamma_k mu_k, propagated in closed form (`pc_output_moments`). Its W2 distance to the surrogate
is the predicted error; the best candidate (vanilla included) is the choice.

The `Pilot` chooser (pds_lightning.alpha.pilot) instead measures on pilot samples of the model itself.

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

from pds_lightning.alpha.dpmpp_sde import dpmpp_2m_sde_output_moments, refuse_skew
from pds_lightning.preconditioner import filter_from_statistic
from pds_lightning.sampling import DPMSolverPP2MSDE
from pds_lightning.sampling.pc import PC
from pds_lightning.sde import SDE
from pds_lightning.statistics import mode_variance

#: Default candidates: None is vanilla (no preconditioning); the official default 5 is included.
DEFAULT_CANDIDATES: tuple[float | None, ...] = (None, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0,
                                                 15.0, 20.0, 30.0, 50.0, 100.0)


@dataclass
class GaussianSurrogate:
    """Stationary Gaussian model of the data in model space: mode variances `lam` and mean image, [C, H, W]."""

    lam: Tensor
    mean: Tensor

    @classmethod
    def from_statistics(cls, statistics, centered: bool = False, floor: float = 1e-10) -> "GaussianSurrogate":
        """lam from `pds_lightning.statistics.mode_variance`; the mean image mapped to model space (`centered`:
        2 x - 1)."""
        lam = mode_variance(statistics, centered, floor, who="the Surrogate alpha chooser", advice=(
            "; use PDS(alpha=Pilot()) (measured on samples of the model), or give alpha a number"))
        mean = statistics.mean.to(torch.float64)
        return cls(lam, 2.0 * mean - 1.0 if centered else mean)


@dataclass
class AlphaChoice:
    """The chosen alpha (None: vanilla), the criterion it minimised (`value`) and every candidate's value.

    method 'surrogate': criterion 'predicted_w2', the predicted W2 per pixel (data units [0, 1]);
    method 'pilot': criterion 'pilot_spectral_error', measured on pilot samples of the model itself.
    """

    alpha: float | None
    value: float
    table: dict = field(default_factory=dict)  # {"vanilla" or alpha: criterion value}
    n_steps: int = 0
    method: str = "surrogate"
    criterion: str = "predicted_w2"
    nfe: int = 0  # network evaluations spent choosing (pilot only)

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "method": self.method, "criterion": self.criterion, "value": self.value,
                "n_steps": self.n_steps, "nfe": self.nfe, "table": {str(k): v for k, v in self.table.items()}}


def candidates_with_vanilla(candidates: Sequence[float | None]) -> list[float | None]:
    """The candidates as floats, each once, with vanilla (None) first: it is always a candidate."""
    return list(dict.fromkeys([None] + [float(a) for a in candidates if a is not None]))


def _filter_values(values: Tensor, peak: float, alpha: float) -> Tensor:
    """The official filter (filter_from_statistic) at statistic `values` [n], normalised by the data's `peak`."""
    m = torch.cat([values.to(torch.float64), values.new_tensor([peak], dtype=torch.float64)])
    return filter_from_statistic(m.view(1, 1, -1), alpha).to(torch.float64).flatten()[:-1]


def _pool(key: Tensor, *fields: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Sum `fields` [n] over equal integer keys: (count [K], [sums [K]]); also the inverse index."""
    cells, inverse, count = torch.unique(key, return_inverse=True, return_counts=True)
    sums = [torch.zeros(len(cells), dtype=f.dtype).index_add_(0, inverse, f) for f in fields]
    return count.to(torch.float64), sums


def space_gains(space_stat: Tensor, candidates: Sequence[float | None], resolution: float = 1e-4) -> Tensor:
    """mean over pixels of S^2 per channel and candidate, [A, C] (ones for vanilla): the closest circulant
    operator to diag(S^2). The statistic is pooled into bins of `resolution` * max first (smooth filter)."""
    C = space_stat.shape[0]
    peak = float(space_stat.max())
    if peak <= 0:
        raise ValueError("space statistic is zero everywhere; the Surrogate alpha chooser cannot use the space filter")
    values = space_stat.to(torch.float64).reshape(C, -1)
    channel = torch.arange(C)[:, None].expand_as(values)
    key = channel * (int(1 / resolution) + 2) + (values / (peak * resolution)).round().to(torch.int64)
    count, (total, chan) = _pool(key.flatten(), values.flatten(), channel.flatten().to(torch.float64))
    chan = (chan / count).round().to(torch.int64)
    rows = []
    for alpha in candidates:
        if alpha is None:
            rows.append(torch.ones(C, dtype=torch.float64))
            continue
        s2 = _filter_values(total / count, peak, alpha).square() * count
        rows.append(torch.zeros(C, dtype=torch.float64).index_add_(0, chan, s2) / values.shape[1])
    return torch.stack(rows)


@dataclass
class Modes:
    """Independent Fourier modes (or pooled cells of them), all channels together, each [K]: variance lam,
    multiplicity count, summed |mu_k|^2, channel index, frequency statistic (cell mean) and its global peak."""

    lam: Tensor
    count: Tensor
    mean_sq: Tensor
    channel: Tensor
    freq_stat: Tensor
    freq_peak: float

    @classmethod
    def from_surrogate(cls, surrogate: GaussianSurrogate, freq_stat: Tensor, max_modes: int = 2048,
                       resolution: float = 0.01) -> "Modes":
        """All C H W modes of the unitary DFT; above `max_modes`, pooled into cells of one channel whose
        log lam and normalised statistic agree to `resolution` (lam and statistic averaged, |mu_k|^2 summed)."""
        C, H, W = surrogate.lam.shape
        lam = surrogate.lam.flatten()
        mean_sq = torch.fft.fft2(surrogate.mean).abs().square().flatten() / (H * W)
        channel = torch.arange(C).repeat_interleave(H * W)
        stat = freq_stat.to(torch.float64).flatten()
        peak = float(stat.max())
        if lam.numel() <= max_modes:
            return cls(lam, torch.ones_like(lam), mean_sq, channel, stat, peak)
        lam_bin = (lam.log() / resolution).round().to(torch.int64)
        lam_bin -= lam_bin.min()
        stat_bin = (stat / (max(peak, 1e-300) * resolution)).round().to(torch.int64)
        span_lam, span_stat = int(lam_bin.max()) + 1, int(stat_bin.max()) + 1
        key = (channel * span_lam + lam_bin) * span_stat + stat_bin
        count, (lam_sum, mean_sq, stat_sum, chan) = _pool(key, lam, mean_sq, stat, channel.to(torch.float64))
        return cls(lam_sum / count, count, mean_sq, (chan / count).round().to(torch.int64), stat_sum / count, peak)

    def gains(self, preconditioner: str, candidates: Sequence[float | None], space_stat: Tensor | None) -> Tensor:
        """Fourier-diagonal part of M M^T per candidate and mode, [A, K]: R^2 (exact) times mean(S^2) of
        the mode's channel (closest circulant; see module doc); ones for vanilla."""
        use_freq = preconditioner in ("freq", "both")
        space = space_gains(space_stat, candidates) if preconditioner in ("space", "both") else None
        rows = []
        for i, alpha in enumerate(candidates):
            g = torch.ones_like(self.lam)
            if alpha is not None and use_freq:
                g = _filter_values(self.freq_stat, self.freq_peak, alpha).square()
            if space is not None:
                g = g * space[i][self.channel]
            rows.append(g)
        return torch.stack(rows)


def pc_of(sampler) -> PC:
    """`sampler` if it is a PC with a predictor (what the Gaussian model follows), else a clear error."""
    if not isinstance(sampler, PC):
        raise ValueError(f"the Surrogate alpha chooser models PC and DPMSolverPP2MSDE; sampler "
                         f"{getattr(sampler, 'name', sampler)!r} is {type(sampler).__name__}: give PDS alpha Pilot or "
                         "a number")
    if sampler.predictor is None:
        raise ValueError(f"alpha choosers model a PC sampler with a predictor; sampler {sampler.name!r} has none: "
                         "give PDS alpha a number")
    return sampler


def _step_schedule(sde: SDE, sampler: PC) -> dict[str, Tensor]:
    """Per-step scalars of the sampler, float64 [N], read off the SDE with a unit input (as the sampler's
    float32 grid): a_t, s_t of the marginal, the predictor's (phi, G^2) with f = phi x, corrector a_t."""
    sde, N, eps = sde.discretised(sampler.steps, sampler.speed_up, sampler.eps)
    t = sde.time_grid(N, eps)
    ones = torch.ones(N, 1, 1, 1)
    a, s = sde.marginal_prob(ones, t)
    phi, G2 = sampler.predictor.linear_step(sde, t)
    corrector_a = sde.ddpm_alpha(t, ones)
    as64 = lambda v: v.flatten().to(torch.float64)
    return {"a": as64(a.flatten()), "s": as64(s), "phi": as64(phi), "G2": as64(G2),
            "corrector_a": as64(corrector_a), "prior": torch.tensor(float(sde.prior_sampling(torch.ones(1))))}


def pc_output_moments(modes: Modes, gain: Tensor, sde: SDE, sampler: PC) -> tuple[Tensor, Tensor]:
    """Exact output moments of the PC sampler on the Gaussian model of `modes`, per candidate and mode.

    Returns (v, gamma), each [A, K]: the output's variance per mode and its mean gamma * mu_k. Updates
    (d = 1 / (a_t^2 lam + s_t^2), score = -d (x - a_t mu), gain = M M^T per mode; the corrector's step size
    from the expected norms, `Corrector.expected_step`):
      corrector: x <- (1 - step gain d) x + step gain d a_t mu + sqrt(2 step) M z
      predictor: x_mean = (1 - gain (phi + G^2 d)) x + gain G^2 d a_t mu, x = x_mean + G M z;
      consistent predictor: gain phi -> phi and gain G^2 -> G^2 (1 + gain) / 2 in the drift.
    """
    sampler = pc_of(sampler)
    sched = _step_schedule(sde, sampler)
    consistent = sampler.pds is not None and sampler.pds.consistent
    corrector = sampler.corrector
    lam = modes.lam
    noise_power = (gain * modes.count).sum(-1)  # E||M z||^2 per candidate
    v = sched["prior"] ** 2 * gain
    gamma = torch.zeros_like(gain)
    v_mean = v
    n_corr = 0 if corrector is None else corrector.steps_per_level
    steps = zip(*(sched[k].tolist() for k in ("a", "s", "corrector_a", "phi", "G2")))
    for a, s, corrector_a, phi, G2 in steps:
        d = 1.0 / (a * a * lam + s * s)
        gd = gain * d
        for _ in range(n_corr):
            g_power = (gd.square() * (v * modes.count + (gamma - a).square() * modes.mean_sq)).sum(-1)
            step = corrector.expected_step(corrector_a, s, noise_power[:, None], g_power[:, None])
            c = 1 - step * gd
            v = c.square() * v + 2 * step * gain
            gamma = c * gamma + step * a * gd
        if consistent:
            c = 1 - phi - G2 * (1 + gain) / 2 * d
            b = G2 * (1 + gain) / 2 * d
        else:
            c = 1 - gain * phi - G2 * gd
            b = G2 * gd
        v_mean = c.square() * v
        v = v_mean + G2 * gain
        gamma = c * gamma + b * a
    return (v_mean if sampler.denoise else v), gamma


def recursion(sampler):
    """The exact Gaussian recursion `(modes, gain, sde, sampler) -> (v, gamma)` that models `sampler`:
    DPMSolverPP2MSDE's (alpha/dpmpp_sde.py) or PC's (a PC with a predictor, pc_of); a clear error for any other
    sampler and for a corrector skew (it couples the modes each recursion evolves on their own)."""
    moments = dpmpp_2m_sde_output_moments if isinstance(sampler, DPMSolverPP2MSDE) else pc_output_moments
    if moments is pc_output_moments:
        pc_of(sampler)
    refuse_skew(sampler)
    return moments


def predicted_w2(modes: Modes, v: Tensor, gamma: Tensor, num_pixels: int, scale: float = 1.0) -> Tensor:
    """W2 per pixel between the output law and the surrogate, [A]; `scale` maps model units to data units.

    W2^2 = sum_k |gamma_k - 1|^2 |mu_k|^2 + sum_k (sqrt v_k - sqrt lam_k)^2 (commuting covariances)."""
    w2_sq = ((v.sqrt() - modes.lam.sqrt()).square() * modes.count + (gamma - 1).square() * modes.mean_sq).sum(-1)
    return (w2_sq / num_pixels).sqrt() / scale


def predict_w2(statistics, sde: SDE, sampler, candidates: Sequence[float | None], centered: bool = False,
               max_modes: int = 2048) -> Tensor:
    """Predicted output W2 per pixel ([0, 1] units) of the PC or DPMSolverPP2MSDE `sampler` on the Gaussian surrogate
    of `statistics`, for each candidate alpha (None: vanilla) of its PDS filters (none: vanilla only), [A] float64."""
    moments = recursion(sampler)
    filters = "none" if sampler.pds is None else sampler.pds.filters
    surrogate = GaussianSurrogate.from_statistics(statistics, centered=centered)
    modes = Modes.from_surrogate(surrogate, statistics.freq_statistic(torch.float64), max_modes=max_modes)
    space_stat = statistics.space_statistic(torch.float64) if filters in ("space", "both") else None
    gain = modes.gains(filters, candidates, space_stat)
    v, gamma = moments(modes, gain, sde, sampler)
    return predicted_w2(modes, v, gamma, surrogate.lam.numel(), scale=2.0 if centered else 1.0)


def choose_alpha(statistics, sde: SDE, sampler, candidates: Sequence[float | None] = DEFAULT_CANDIDATES,
                 centered: bool = False, max_modes: int = 2048) -> AlphaChoice:
    """The candidate alpha (None = vanilla, always included) with the lowest predicted output W2.

    `sampler`: a PC or DPMSolverPP2MSDE component with a PDS component (its filters); `statistics`: ImageStatistics
    of the data in [0, 1] (CPU); `centered`: the model's space.
    """
    recursion(sampler)
    if sampler.pds is None:
        raise ValueError(f"sampler {sampler.name!r}: an alpha chooser picks the strength of PDS; give the sampler "
                         "a PDS component (filters 'freq', 'space' or 'both')")
    candidates = candidates_with_vanilla(candidates)
    w2 = predict_w2(statistics, sde, sampler, candidates, centered=centered, max_modes=max_modes)
    w2 = torch.where(torch.isfinite(w2), w2, torch.full_like(w2, math.inf))  # a diverging candidate loses
    best = int(torch.argmin(w2))
    N, _ = sampler.steps_on(sde)
    table = {("vanilla" if a is None else a): float(w) for a, w in zip(candidates, w2.tolist())}
    return AlphaChoice(candidates[best], float(w2[best]), table, N)
