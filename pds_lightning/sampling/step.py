"""What every sampler's loop shares: the counted score, the first draw, the finite check, and the context a
predictor or corrector update reads (the SDE, the score, the PDS preconditioner M and the noise)."""

from __future__ import annotations

import torch
from torch import Tensor

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sde import SDE


class NonFiniteSampleError(RuntimeError):
    """The sample became nan/inf during sampling; `step` is the 0-based step index where it was seen."""

    def __init__(self, step: int, total: int):
        self.step = step
        super().__init__(f"non-finite values (nan/inf) in the sample at step {step} of {total}; the "
                         "preconditioned steps are too large for this step budget: lower alpha (towards "
                         "vanilla), lower speed_up (more steps), or reduce snr. (Accuracy, separately: the "
                         "PDS Langevin corrector keeps the target p_t; the official PDS predictor does not, "
                         "PDS(predictor='consistent') does.)")


class CountingScore:
    """Wraps a score function to count network evaluations; the score comes back in x's dtype, so a network
    run under autocast (bf16 output) never lowers the precision of the sampler's state x."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        return self.score_fn(x, t).to(x.dtype)


def check_finite(x: Tensor, step: int, total: int, every: int) -> None:
    """NonFiniteSampleError when x holds nan/inf at every `every`-th step and the last (0: never checked)."""
    if every and ((step + 1) % every == 0 or step == total - 1) and not torch.isfinite(x).all():
        raise NonFiniteSampleError(step, total)


def identity_if_none(preconditioner: Preconditioner | None) -> Preconditioner:
    """The preconditioner, or the identity (no filters: M = I, vanilla sampling) when there is none."""
    return Preconditioner() if preconditioner is None else preconditioner


def standard_normal(shape, noise, dtype) -> Tensor:
    """One standard-normal draw z of shape [B, C, H, W] from `noise`, on the noise source's device."""
    if len(shape) != 4:
        raise ValueError(f"shape must be [B, C, H, W], got {tuple(shape)}")
    return noise.noise(torch.zeros(shape, device=noise.device, dtype=dtype))


def initial_sample(sde: SDE, shape, preconditioner: Preconditioner, noise, dtype) -> Tensor:
    """x_T = prior(M z) from one standard-normal draw z of shape [B, C, H, W]."""
    return sde.prior_sampling(preconditioner.noise(standard_normal(shape, noise, dtype)))


class StepContext:
    """What a predictor / corrector update reads: drifts get M M^T (`preconditioner.drift`), draws get M."""

    def __init__(self, sde: SDE, score_fn, preconditioner: Preconditioner, noise):
        self.sde = sde
        self.score_fn = score_fn
        self.preconditioner = preconditioner
        self.noise = noise

    def mz(self, like: Tensor) -> Tensor:
        """M z for a fresh standard-normal draw z shaped like `like`."""
        return self.preconditioner.noise(self.noise.noise(like))
