"""Sampler components: every field belongs to its class and is checked once; a flat dict's non-applicable
field is refused (issue 24's five examples); nan / inf refused (issue 23 item 12); NFE exact."""

import math

import pytest
import torch

from pds_lightning.alpha import Pilot, Surrogate
from pds_lightning.legacy import SamplerSettings, sampler_from_flat, sampler_from_hparam
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling import (ALD, EDMHeun, EDMStochastic, PC, PDS, DPMSolverPP2M, DPMSolverPP2MSDE, Euler,
                                    EulerMaruyama, Karras, Langevin, ProbabilityFlowODE, Restart, SDEGrid, SeededNoise,
                                    generate)
from pds_lightning.sde import VESDE, VPSDE

FIVE = [dict(method="pc", S_churn=40.0), dict(method="edm_heun", S_churn=40.0),
        dict(method="ode", predictor="euler_maruyama", corrector="ald", snr=0.5),
        dict(method="edm_heun", denoise=False), dict(preconditioner="none", alpha=3.0)]


@pytest.mark.parametrize("flat", FIVE, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()))
def test_flat_field_that_does_not_apply_is_refused_naming_it(flat):
    key = "(" + "|".join(k for k in flat if k not in ("method", "preconditioner")) + ")"
    with pytest.raises(ValueError, match=f"{key}=.*does not apply"):
        sampler_from_flat(flat)
    with pytest.raises(ValueError, match=f"{key}="):
        SamplerSettings(**flat)


@pytest.mark.parametrize("flat", [dict(corrector="ald", step_size="batch"), dict(corrector="none", snr=0.3),
                                  dict(preconditioner="both", alpha=3.0, auto_method="pilot"),
                                  dict(method="euler", snr=0.3), dict(method="dpmpp_2m", schedule="sde", rho=3.0),
                                  dict(method="edm_heun", pds_predictor="consistent", preconditioner="both",
                                       ode_corrector="langevin")])
def test_more_silent_no_ops_of_the_flat_form_are_refused(flat):
    with pytest.raises(ValueError):
        sampler_from_flat(flat)


def test_flat_unknown_key_is_named():
    with pytest.raises(ValueError, match="unknown key 'n_step'"):
        sampler_from_flat({"n_step": 3})


def test_new_components_take_only_their_own_fields():
    for cls, field in ((PC, "S_churn"), (EDMHeun, "denoise"), (ProbabilityFlowODE, "corrector"), (EDMHeun, "S_churn"),
                       (Langevin, "rho"), (ALD, "step_size"), (SDEGrid, "rho")):
        with pytest.raises(TypeError, match=field):
            cls(**{field: 1})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_snr_nan_inf_and_nonpositive_are_refused_up_front(bad):
    with pytest.raises(ValueError, match="snr must be a finite number > 0"):
        Langevin(snr=bad)
    with pytest.raises(ValueError, match="snr must be a finite number > 0"):
        ALD(snr=bad)
    with pytest.raises(ValueError, match="snr"):
        SamplerSettings(snr=bad)


@pytest.mark.parametrize("make", [lambda v: PDS(alpha=v), lambda v: Karras(rho=v), lambda v: EDMStochastic(S_churn=v),
                                  lambda v: EDMStochastic(S_noise=v), lambda v: PC(speed_up=v), lambda v: PC(eps=v),
                                  lambda v: PC(guidance_scale=v), lambda v: Karras(sigma_min=v)])
def test_every_float_field_refuses_nan_and_inf(make):
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError):
            make(bad)


def test_pds_in_sigma_samplers_only_through_their_corrector():
    with pytest.raises(ValueError, match="only in its Langevin corrector"):
        EDMHeun(pds=PDS())
    with pytest.raises(ValueError, match="PC sampler"):
        Euler(corrector=Langevin(), pds=PDS(predictor="consistent"))
    with pytest.raises(ValueError, match="number"):
        DPMSolverPP2M(corrector=Langevin(), pds=PDS(alpha=Surrogate()))
    with pytest.raises(ValueError, match="predictor, a corrector or both"):
        PC(predictor=None, corrector=None)


def gaussian(sde):
    return GaussianScore(torch.zeros(1, 8, 8), power_law_spectrum(8, 8, 1), sde)


@pytest.mark.parametrize("sampler", [
    PC(pc_steps=7), PC(pc_steps=5, corrector=ALD(steps_per_level=3)), PC(pc_steps=6, predictor=None),
    PC(pc_steps=6, predictor=EulerMaruyama(), corrector=None), PC(speed_up=25.0, pds=PDS(filters="freq")),
    ProbabilityFlowODE(steps=4), ProbabilityFlowODE(steps=4, denoise=False), EDMHeun(levels=5),
    EDMStochastic(levels=4, S_churn=10.0), DPMSolverPP2M(levels=6), Euler(levels=3, schedule=SDEGrid()),
    EDMHeun(levels=4, corrector=Langevin(steps_per_level=2), pds=PDS()), DPMSolverPP2MSDE(levels=5),
    DPMSolverPP2MSDE(levels=4, eta=0.5, corrector=Langevin(), pds=PDS()),
    Restart(levels=8, intervals=[[0.5, 2.0]], repeats=2, inner_steps=3),
    Restart(levels=10, intervals=[[0.1, 0.4], [1.0, 3.0]], repeats=[1, 2], inner_steps=[2, 4])], ids=repr)
def test_nfe_is_exact(sampler):
    sde = VESDE(0.01, 10.0, 100)
    score = gaussian(sde)
    stats = type("S", (), {"freq_statistic": lambda self: power_law_spectrum(8, 8, 1) + 1.0,
                           "space_statistic": lambda self: torch.ones(1, 8, 8)})()
    result = generate(sampler, score, sde, [0, 1], (1, 8, 8), statistics=stats)
    assert result.nfe == sampler.nfe(sde)


def test_flat_translation_and_component_config_round_trip():
    flat = dict(name="x", method="edm_stochastic", n_steps=6, S_churn=40.0, ode_corrector="langevin", snr=0.1,
                n_corrector_steps=2, preconditioner="space", alpha=3.0, schedule="karras", rho=5.0)
    sampler = sampler_from_flat(flat)
    assert sampler == EDMStochastic(levels=6, S_churn=40.0, corrector=Langevin(0.1, 2), schedule=Karras(rho=5.0),
                                    pds=PDS(filters="space", alpha=3.0), name="x")
    assert sampler_from_hparam(sampler.config()) == sampler
    auto = sampler_from_flat(dict(preconditioner="both", alpha="auto", auto_method="pilot", pilot_samples=4))
    assert auto.pds.alpha == Pilot(4)


def test_checkpoint_class_path_must_be_a_sampler_component():
    with pytest.raises(ValueError, match="refused"):
        sampler_from_hparam({"class_path": "os.system", "init_args": {}})
    with pytest.raises(ValueError, match="refused"):
        sampler_from_hparam({"class_path": "pds_lightning.sampling.PC",
                             "init_args": {"pds": {"class_path": "subprocess.Popen", "init_args": {}}}})


def test_the_stochastic_components_run_their_engines_and_round_trip():
    """DPMSolverPP2MSDE / Restart sample exactly what sampling.stochastic's functions sample, store as plain
    class_path / init_args data, and refuse bad settings at construction (not at sampling)."""
    from pds_lightning.sampling.noise import SeededNoise
    from pds_lightning.sampling.stochastic import dpmpp_2m_sde, restart

    sde = VESDE(0.01, 10.0, 100)
    score = gaussian(sde)
    for component, function, kwargs in [
            (DPMSolverPP2MSDE(levels=6, eta=0.7), dpmpp_2m_sde, dict(n_steps=6, eta=0.7)),
            (Restart(levels=8, intervals=[[0.5, 2.0]], repeats=3, inner_steps=2), restart,
             dict(n_steps=8, intervals=[[0.5, 2.0]], repeats=3, inner_steps=2))]:
        got = generate(component, score, sde, [3, 4], (1, 8, 8))
        want = function(score, sde, (2, 1, 8, 8), noise=SeededNoise([3, 4], torch.device("cpu")), **kwargs)
        assert torch.equal(got.x, want.x) and got.nfe == want.nfe == component.nfe(sde)
        assert sampler_from_hparam(component.config()) == component
    for make, message in [(lambda: DPMSolverPP2MSDE(eta=-0.1), "eta must be"),
                          (lambda: DPMSolverPP2MSDE(S_noise=float("nan")), "S_noise must be"),
                          (lambda: Restart(intervals=[[0.3, 0.1]]), "t_max must be"),
                          (lambda: Restart(intervals=[0.1, 0.3]), "pair"),
                          (lambda: Restart(repeats=0), "repeats must be an integer >= 1"),
                          (lambda: Restart(inner_steps=[2, 3]), "one int per interval"),
                          (lambda: Restart(inner_steps=1), "inner_steps must be an integer >= 2")]:
        with pytest.raises(ValueError, match=message):
            make()
