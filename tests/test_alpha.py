"""alpha: auto — the Gaussian-surrogate prediction against the sampler itself, on Gaussian targets."""

import pytest
import torch

from pds_lightning.alpha import GaussianSurrogate, Modes, choose_alpha, mode_gains, pc_output_moments, predicted_w2
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling.settings import SamplerSettings, generate
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics

SIZE, MEAN = 16, 0.45
SDE = VESDE(0.01, 5.0, 1000)
BATCH = 2048


def target():
    lam = power_law_spectrum(SIZE, SIZE, variance=0.05)
    mean = torch.full((1, SIZE, SIZE), MEAN, dtype=torch.float64)
    power = SIZE * SIZE * lam + torch.fft.fft2(mean).abs().square()  # E|fft2 x|^2 of the target, exactly
    stats = ImageStatistics.from_moments(count=10**6, power_mean=power, mean=mean, sq_mean=lam.mean() + mean ** 2)
    return lam, stats


def measured_w2(x: torch.Tensor, lam: torch.Tensor) -> float:
    """W2 per pixel between N(sample moments, diagonal in Fourier) and the target (the output law is
    stationary Gaussian here, so per-mode variances and the mean image give it)."""
    x = x.double()
    n = SIZE * SIZE
    xbar = x.mean(0)
    v = (torch.fft.fft2(x - xbar).abs().square().mean(0) / n) * x.shape[0] / (x.shape[0] - 1)
    w2_sq = (v.sqrt() - lam.sqrt()).square().sum() + (torch.fft.fft2(xbar - MEAN).abs().square() / n).sum()
    # Finite-batch bias, removed so the figure estimates the sampler's law: E(sqrt v_hat - sqrt v)^2 ~ v / 4B
    # per (complex) mode, and the sample mean adds v / B per mode.
    w2_sq = w2_sq - 1.25 * v.sum() / x.shape[0]
    return float((w2_sq.clamp_min(0) / n).sqrt())


def sample(settings, lam, stats):
    score = GaussianScore(MEAN, lam, SDE)
    return generate(settings, score, SDE, torch.arange(BATCH), (1, SIZE, SIZE), statistics=stats).x


def settings_for(n_steps, alpha, preconditioner="freq"):
    # Batch-mean Langevin norms: over 2048 samples they equal the expected norms the surrogate assumes.
    return SamplerSettings(name="t", n_steps=n_steps, preconditioner=preconditioner, alpha=alpha, step_size="batch")


@pytest.mark.parametrize("n_steps,alpha", [(40, 5.0), (66, None), (66, 8.0)])
def test_predicted_error_matches_the_sampler_within_10_percent(n_steps, alpha):
    lam, stats = target()
    setting = settings_for(n_steps, 5.0 if alpha is None else alpha, "none" if alpha is None else "freq")
    surrogate = GaussianSurrogate.from_statistics(stats)
    torch.testing.assert_close(surrogate.lam, lam, rtol=1e-6, atol=1e-12)
    modes = Modes.from_fields(surrogate.lam, surrogate.mean, mode_gains(stats, "freq", [alpha]))
    v, gamma = pc_output_moments(modes, SDE, setting)
    predicted = float(predicted_w2(modes, v, gamma, lam.numel())[0])
    measured = measured_w2(sample(setting, lam, stats), lam)
    assert measured == pytest.approx(predicted, rel=0.10), (measured, predicted)


@pytest.mark.parametrize("n_steps", [200, 100, 66, 40])
def test_auto_is_never_worse_than_vanilla_or_alpha_5(n_steps):
    lam, stats = target()
    choice = choose_alpha(stats, SDE, settings_for(n_steps, 5.0))
    assert choice.table["vanilla"] >= choice.predicted_w2 and choice.table[5.0] >= choice.predicted_w2
    chosen = settings_for(n_steps, 5.0, "none") if choice.alpha is None else settings_for(n_steps, choice.alpha)
    w_auto = measured_w2(sample(chosen, lam, stats), lam)
    w_vanilla = measured_w2(sample(settings_for(n_steps, 5.0, "none"), lam, stats), lam)
    w_five = measured_w2(sample(settings_for(n_steps, 5.0), lam, stats), lam)
    # Sampling noise of the measured W2 is a few percent at this batch size.
    assert w_auto <= 1.05 * w_vanilla and w_auto <= 1.05 * w_five, (choice.alpha, w_auto, w_vanilla, w_five)


def test_generate_resolves_auto_to_the_chosen_alpha_and_reports_it():
    lam, stats = target()
    auto = SamplerSettings(name="auto", n_steps=66, preconditioner="freq", alpha="auto", step_size="batch")
    choice = choose_alpha(stats, SDE, auto)
    assert choice.alpha is not None  # on a 1/f^2 target at 66 steps preconditioning is predicted to help
    score = GaussianScore(MEAN, lam, SDE)
    seeds = torch.arange(4)
    result = generate(auto, score, SDE, seeds, (1, SIZE, SIZE), statistics=stats)
    fixed = generate(settings_for(66, choice.alpha), score, SDE, seeds, (1, SIZE, SIZE), statistics=stats)
    torch.testing.assert_close(result.x, fixed.x, rtol=0, atol=0)
    assert result.info["alpha_auto"]["alpha"] == choice.alpha
    assert result.info["alpha_auto"]["predicted_w2"] == pytest.approx(choice.predicted_w2)


def test_auto_needs_a_preconditioner_and_statistics():
    with pytest.raises(ValueError, match="preconditioner"):
        SamplerSettings(alpha="auto", preconditioner="none")
    with pytest.raises(ValueError, match="'auto'"):
        SamplerSettings(alpha="fast", preconditioner="freq")
    lam, _ = target()
    with pytest.raises(ValueError, match="statistics"):
        generate(SamplerSettings(alpha="auto", preconditioner="freq", n_steps=10), GaussianScore(MEAN, lam, SDE), SDE,
                 [0], (1, SIZE, SIZE), statistics=None)
