"""The PDS predictor on an exact Gaussian target, no corrector: what the official and consistent variants keep.

Official PDS (drift M M^T (f - g^2 score), noise g M z) does not keep p_t: output variance / target variance
on strongly preconditioned Fourier modes stays near 0.75 at alpha 5 however large N is. The consistent
variant (drift f - (g^2/2)(I + M M^T) score, same noise) keeps p_t: the ratio tends to 1 as N grows.
"""

import pytest
import torch
from helpers import preconditioner_of, run_sampler

from pds_lightning.alpha.surrogate import GaussianSurrogate, Modes, pc_output_moments
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling import PC, PDS, AncestralSampling, EulerMaruyama, ReverseDiffusion, SeededNoise, generate
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics

from helpers import BatchNoise, gaussian_statistics

H = W = 8
MEAN = 0.45
LAM = power_law_spectrum(H, W, variance=0.05)  # [1, H, W]
SDE = VESDE(0.01, 5.0, 1000)
BATCH = 1024


def exact_statistics(lam=LAM, mean_value=MEAN) -> ImageStatistics:
    return gaussian_statistics(lam, mean_value)


def settings(steps, variant, predictor=ReverseDiffusion(), denoise=True):
    return PC(steps=steps, corrector=None, pds=PDS(filters="freq", alpha=5.0, predictor=variant), predictor=predictor,
              denoise=denoise)


def strong_modes(preconditioner) -> torch.Tensor:
    """The quarter of the Fourier modes with the largest M M^T gain R^2 (the lowest-power modes)."""
    gain = preconditioner.freq_filter[0].double() ** 2
    return gain > gain.quantile(0.75)


def measured_ratio(s: PC, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-mode output variance / target variance [H, W] from BATCH samples, the M M^T gain mask)."""
    stats = exact_statistics()
    pre = preconditioner_of(s, stats)
    x = run_sampler(s, GaussianScore(MEAN, LAM, SDE), SDE, (BATCH, 1, H, W), BatchNoise(seed), stats).x.double()
    v = torch.fft.fft2(x - x.mean(0)).abs().square().sum(0)[0] / (H * W) / (BATCH - 1)
    return v / LAM[0], strong_modes(pre)


def predicted_ratio(s: PC) -> torch.Tensor:
    """The same ratio from the exact moment recursion of pds_lightning.alpha (per mode, [H, W])."""
    stats = exact_statistics()
    modes = Modes.from_surrogate(GaussianSurrogate.from_statistics(stats), stats.freq_statistic(torch.float64))
    v, _ = pc_output_moments(modes, modes.gains("freq", [s.pds.alpha], None), SDE, s)
    return (v[0] / modes.lam).view(H, W)


# Sampling error of a per-mode variance from BATCH draws: relative std 1/sqrt(BATCH) (complex modes; sqrt 2
# more for the real DC/Nyquist ones); the 16 strong modes are 8 conjugate pairs, so their mean has ~1.1%.
MODE_TOL = 5 * 2 ** 0.5 / BATCH ** 0.5
MEAN_TOL = 4 / (8 * BATCH) ** 0.5


@pytest.mark.parametrize("predictor", [ReverseDiffusion(), EulerMaruyama()], ids=repr)
def test_consistent_variant_tends_to_the_target_and_the_official_one_does_not(predictor):
    ratios = {}
    for variant in ("official", "consistent"):
        for n in (100, 400, 1000):
            if isinstance(predictor, EulerMaruyama) and n != 400:
                continue  # the N trend is the same; one point keeps the test short
            s = settings(n, variant, predictor)
            ratio, strong = measured_ratio(s)
            expected = predicted_ratio(s)
            # The sampler and the closed-form recursion agree mode by mode (independent computations).
            assert (ratio - expected).abs().max() < MODE_TOL, (variant, n, ratio, expected)
            ratios[variant, n] = ratio[strong].mean().item()
    n = 1000 if isinstance(predictor, ReverseDiffusion) else 400
    official, consistent = ratios["official", n], ratios["consistent", n]
    assert official < 0.80, ratios  # ~0.75: the official predictor under-disperses these modes
    assert abs(consistent - 1) < 0.015 + 3 * MEAN_TOL, ratios  # 0.995 (N 1000, reverse diffusion), 1.011 (EM 400)
    if isinstance(predictor, ReverseDiffusion):
        assert ratios["consistent", 100] > 1.02 and ratios["official", 100] < 0.82, ratios
        assert all(ratios["official", n] < 0.82 for n in (100, 400, 1000)), ratios


def limit_settings(n_steps, variant):
    # Without noise removal: the last noise-free step drops G^2 M M^T (PDS) or G^2 (vanilla) of variance,
    # a ~0.5% difference on these modes at any N that is not the predictor's.
    return settings(n_steps, variant, denoise=False)


def vanilla_ratio(n_steps) -> torch.Tensor:
    """The recursion with an identity gain (vanilla sampling), per mode [H, W]."""
    stats = exact_statistics()
    modes = Modes.from_surrogate(GaussianSurrogate.from_statistics(stats), stats.freq_statistic(torch.float64))
    v, _ = pc_output_moments(modes, torch.ones(1, H * W, dtype=torch.float64), SDE, limit_settings(n_steps, "official"))
    return (v[0] / modes.lam).view(H, W)


def test_the_gap_closes_for_the_consistent_variant_only():
    """The recursion (checked above against the sampler) at large N: consistent -> vanilla (error ~ 1/N),
    official does not."""
    strong = strong_modes(preconditioner_of(settings(10, "official"), exact_statistics()))
    gaps = {}
    for n in (100, 400, 1000, 4000):
        vanilla = vanilla_ratio(n)[strong]
        gaps[n] = (predicted_ratio(limit_settings(n, "consistent"))[strong] - vanilla).abs().max().item()
        official = predicted_ratio(limit_settings(n, "official"))[strong]
        assert (official - vanilla).max() < -0.18, n
    assert gaps[100] > gaps[400] > gaps[1000] > gaps[4000] and gaps[4000] < 5e-4, gaps
    assert gaps[100] / gaps[1000] > 5, gaps


def test_consistent_equals_vanilla_without_a_preconditioner_and_keeps_the_noise_stream():
    sde = VESDE(0.01, 5.0, 50)
    score = GaussianScore(MEAN, LAM, sde)
    for predictor in (ReverseDiffusion(), EulerMaruyama()):
        vanilla = generate(PC(predictor=predictor), score, sde, range(4), (1, H, W))
        # the consistent update with M = I (no preconditioner given)
        consistent = PC(predictor=predictor, pds=PDS(predictor="consistent"))(score, sde, (4, 1, H, W),
                                                                              noise=SeededNoise(range(4)))
        torch.testing.assert_close(consistent.x, vanilla.x, rtol=1e-5, atol=1e-5)
        assert consistent.nfe == vanilla.nfe


def test_consistent_is_refused_where_it_is_not_defined():
    with pytest.raises(ValueError, match="predictor 'consistent' exists for.*not AncestralSampling"):
        PC(predictor=AncestralSampling(), pds=PDS(filters="both", predictor="consistent"))
    with pytest.raises(ValueError, match="PDS: unknown predictor 'exact'"):
        PDS(filters="both", predictor="exact")
