"""alpha for DPM-Solver++(2M) SDE and the sigma-space samplers: the surrogate's recursion against the sampler's exact
law (impulse responses, frequency filter) and against its draws (Langevin corrector); vanilla when PDS hurts."""

import pytest
import torch
from helpers import circulant_law, gaussian_statistics, impulse_noise, tiny_module

from pds_lightning.alpha import Pilot, Surrogate, choose_alpha, pilot_alpha, predict_w2, resolve_alpha
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling import PDS, DPMSolverPP2MSDE, EDMHeun, Karras, Langevin, generate
from pds_lightning.sampling.skew import PairedRotation
from pds_lightning.sde import VESDE, VPSDE

from test_alpha import AntitheticNoise, measured_w2, target

SIZE8, MEAN = 8, 0.45
LAM8 = power_law_spectrum(SIZE8, SIZE8, variance=0.05)
STATS8 = gaussian_statistics(LAM8, MEAN)
SCHEDULE = Karras(sigma_min=2e-3, sigma_max=80.0)


def sampler(levels, alpha=Surrogate(), **kw):
    return DPMSolverPP2MSDE(steps=levels, schedule=SCHEDULE, pds=PDS(filters="freq", alpha=alpha), **kw)


def exact_w2(s: DPMSolverPP2MSDE, sde) -> float:
    """W2 per pixel of the sampler's output law against the target, exactly (no corrector: affine, circulant)."""
    levels, _ = s.steps_on(sde)
    M = None if s.pds is None else s.pds.preconditioner(STATS8)
    x = s(GaussianScore(MEAN, LAM8, sde), sde, (levels + 1, 1, SIZE8, SIZE8), noise=impulse_noise(
        levels, (1, SIZE8, SIZE8)), preconditioner=M, dtype=torch.float64).x
    mean, v = circulant_law(x)
    sq = (mean - MEAN).square().sum() + (v.sqrt() - LAM8[0].sqrt()).square().sum()
    return float(sq / SIZE8 ** 2) ** 0.5


@pytest.mark.parametrize("sde", [VESDE(), VPSDE()], ids=["VE", "VP"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_surrogate_is_the_exact_law_of_the_preconditioned_sampler(sde, eta):
    candidates = [None, 2.0, 5.0]
    predicted = predict_w2(STATS8, sde, sampler(6, eta=eta), candidates).tolist()
    exact = [exact_w2(sampler(6, eta=eta).with_alpha(a), sde) for a in candidates]
    assert predicted == pytest.approx(exact, rel=1e-6)
    assert len(set(round(v, 6) for v in exact)) == 3  # the candidates differ: the recursion sees the filter


def test_surrogate_with_the_langevin_corrector_matches_the_draws_within_10_percent():
    lam, stats = target()  # test_alpha's 16 x 16 target, VE sigma 0.01..5
    sde = VESDE(0.01, 5.0, 1000)
    corrected = DPMSolverPP2MSDE(steps=10, corrector=Langevin(step_size="batch"),
                                 pds=PDS(filters="freq", alpha=Surrogate()))
    for alpha in (None, 3.0):
        predicted = float(predict_w2(stats, sde, corrected, [alpha])[0])
        s = corrected.with_alpha(alpha)
        M = None if alpha is None else s.pds.preconditioner(stats)
        x = s(GaussianScore(MEAN, lam, sde), sde, (2048, 1, 16, 16), noise=AntitheticNoise(), preconditioner=M).x
        assert measured_w2(x, lam) == pytest.approx(predicted, rel=0.10), (alpha, predicted)


def test_auto_chooses_vanilla_when_the_filter_hurts_and_an_alpha_when_it_helps():
    """At 6 levels every filter raises the exact W2 (vanilla is chosen), at 10 levels alpha 1.5 lowers it."""
    sde = VESDE()
    resolved, info = resolve_alpha(sampler(6), sde, STATS8)
    assert info["alpha"] is None and resolved.pds is None and info["table"]["vanilla"] == info["value"]
    assert exact_w2(resolved, sde) < min(exact_w2(sampler(6, a), sde) for a in (1.5, 5.0, 20.0))
    resolved, info = resolve_alpha(sampler(10), sde, STATS8)
    assert info["alpha"] == 1.5 and resolved.pds == PDS(filters="freq", alpha=1.5)
    assert exact_w2(resolved, sde) == pytest.approx(info["value"], rel=1e-6)
    assert exact_w2(resolved, sde) < 0.8 * exact_w2(sampler(10).with_alpha(None), sde)  # 0.0199 against 0.0256


def test_score_module_resolves_surrogate_alpha_for_the_sde_sampler():
    model = tiny_module(statistics=True)
    result = model.sample(DPMSolverPP2MSDE(steps=4, pds=PDS(filters="freq", alpha=Surrogate())), torch.arange(2))
    choice = result.info["alpha_auto"]
    assert choice["method"] == "surrogate" and choice["n_steps"] == 4 and result.nfe == 4
    assert choice["alpha"] == choose_alpha(model.data_statistics, model.sde, DPMSolverPP2MSDE(
        steps=4, pds=PDS(filters="freq", alpha=Surrogate()))).alpha


def test_pilot_chooses_for_a_sigma_space_sampler_with_the_corrector():
    sde = VESDE(0.01, 10.0, 100)
    s = EDMHeun(steps=3, corrector=Langevin(), pds=PDS(filters="freq", alpha=Pilot(2)))
    choice = pilot_alpha(s, GaussianScore(MEAN, LAM8.float(), sde), sde, (1, SIZE8, SIZE8), STATS8,
                         candidates=(None, 5.0))
    assert choice.n_steps == 3 and set(choice.table) == {"vanilla", 5.0} and choice.nfe == 2 * 2 * s.nfe(sde)


def test_surrogate_refuses_what_it_does_not_model():
    with pytest.raises(ValueError, match="the Surrogate alpha chooser models PC and DPMSolverPP2MSDE, not EDMHeun"):
        EDMHeun(steps=4, corrector=Langevin(), pds=PDS(alpha=Surrogate()))
    skewed = sampler(6, corrector=Langevin(skew=PairedRotation()))
    with pytest.raises(ValueError, match="the corrector's skew couples modes; give PDS alpha Pilot or a number"):
        resolve_alpha(skewed, VESDE(), STATS8)
