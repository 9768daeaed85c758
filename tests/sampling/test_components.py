"""Sampler components: every field belongs to its class and is checked once; nan / inf refused (issue 23 item 12);
a setting that would have no effect refused (issue 32 item 3); NFE exact; configs rebuilt behind the allow-list.
The flat form of older versions: tests/test_legacy.py."""

import math

import pytest
import torch

from pds_lightning.alpha import AlphaChoice, Pilot, Surrogate, resolve_alpha
from pds_lightning.legacy import sampler_from_hparam
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling import (ALD, EDMHeun, EDMStochastic, PC, PDS, AlphaChooser, AncestralSampling,
                                    DPMSolverPP2M, DPMSolverPP2MSDE, Euler, EulerMaruyama, Karras, Langevin,
                                    ProbabilityFlowODE, RecordedNoise, Restart, Sampler, SDEGrid, SeededNoise, generate)
from pds_lightning.sampling.schedules import Schedule
from pds_lightning.sampling.known import KnownPart
from pds_lightning.sampling_callback import SamplingCallback
from pds_lightning.sampling.step import StepContext
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics


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


@pytest.mark.parametrize("make", [lambda v: PDS(alpha=v), lambda v: Karras(rho=v), lambda v: EDMStochastic(S_churn=v),
                                  lambda v: EDMStochastic(S_noise=v), lambda v: PC(speed_up=v), lambda v: PC(eps=v),
                                  lambda v: PC(guidance_scale=v), lambda v: Karras(sigma_min=v)])
def test_every_float_field_refuses_nan_and_inf(make):
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match=f"must be a finite number.*got {bad}"):
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
    PC(steps=7), PC(steps=5, corrector=ALD(steps_per_level=3)), PC(steps=6, predictor=None),
    PC(steps=6, predictor=EulerMaruyama(), corrector=None), PC(speed_up=25.0, pds=PDS(filters="freq")),
    ProbabilityFlowODE(steps=4), ProbabilityFlowODE(steps=4, denoise=False), EDMHeun(steps=5),
    EDMStochastic(steps=4, S_churn=10.0), DPMSolverPP2M(steps=6), Euler(steps=3, schedule=SDEGrid()),
    EDMHeun(steps=4, corrector=Langevin(steps_per_level=2), pds=PDS()), DPMSolverPP2MSDE(steps=5),
    DPMSolverPP2MSDE(steps=4, eta=0.5, corrector=Langevin(), pds=PDS(filters="freq")),
    DPMSolverPP2MSDE(steps=5, pds=PDS(filters="space")),
    Restart(steps=8, intervals=[[0.5, 2.0]], repeats=2, inner_steps=3),
    Restart(steps=10, intervals=[[0.1, 0.4], [1.0, 3.0]], repeats=[1, 2], inner_steps=[2, 4])], ids=repr)
def test_nfe_is_exact(sampler):
    sde = VESDE(0.01, 10.0, 100)
    score = gaussian(sde)
    stats = type("S", (), {"freq_statistic": lambda self: power_law_spectrum(8, 8, 1) + 1.0,
                           "space_statistic": lambda self: torch.ones(1, 8, 8)})()
    result = generate(sampler, score, sde, [0, 1], (1, 8, 8), statistics=stats)
    assert result.nfe == sampler.nfe(sde)


def test_checkpoint_class_path_must_be_a_sampler_component():
    with pytest.raises(ValueError, match="refused model.sampler 'os.system' unimported: it is outside the allow-list"):
        sampler_from_hparam({"class_path": "os.system", "init_args": {}})
    with pytest.raises(ValueError, match="refused model.sampler.pds 'subprocess.Popen' unimported"):
        sampler_from_hparam({"class_path": "pds_lightning.sampling.PC",
                             "init_args": {"pds": {"class_path": "subprocess.Popen", "init_args": {}}}})
    with pytest.raises(ValueError, match="refused model.sampler 'pds_lightning.sde.VESDE': it is not a subclass of "
                                         "pds_lightning.sampling.base.Sampler"):
        sampler_from_hparam({"class_path": "pds_lightning.sde.VESDE", "init_args": {}})


def test_the_stochastic_components_round_trip_and_refuse_bad_settings_at_construction():
    """DPMSolverPP2MSDE / Restart store as plain class_path / init_args data and refuse bad settings at
    construction (not at sampling)."""
    for component in [DPMSolverPP2MSDE(steps=6, eta=0.7),
                      Restart(steps=8, intervals=[[0.5, 2.0]], repeats=3, inner_steps=2)]:
        assert Sampler.from_config(component.config()) == component
    for make, message in [(lambda: DPMSolverPP2MSDE(eta=-0.1), "eta must be"),
                          (lambda: DPMSolverPP2MSDE(S_noise=float("nan")), "S_noise must be"),
                          (lambda: Restart(intervals=[[0.3, 0.1]]), "t_max must be"),
                          (lambda: Restart(intervals=[0.1, 0.3]), "pair"),
                          (lambda: Restart(repeats=0), "repeats must be an integer >= 1"),
                          (lambda: Restart(inner_steps=[2, 3]), "one int per interval"),
                          (lambda: Restart(inner_steps=1), "inner_steps must be an integer >= 2")]:
        with pytest.raises(ValueError, match=message):
            make()


# ---- each component does its own work: a new part is one class (issue 32 item 1) -----------------------------
class HalfStep(EulerMaruyama):
    """A predictor defined here only: Euler-Maruyama whose drift is halved (a test of the plumbing, not a method)."""

    def update(self, ctx, x, t):
        x_new, x_mean = super().update(ctx, x, t)
        return x + (x_new - x) / 2, x + (x_mean - x) / 2


class Geometric(Schedule):
    """A schedule defined here only: sigma_max (sigma_min / sigma_max)^(i / (n - 1)), geometric levels."""

    def levels(self, sde, n, eps):
        lo, hi = float(sde.sigma_of_t(torch.tensor(eps, dtype=torch.float64))), float(sde.sigma_max)
        return hi * (lo / hi) ** torch.linspace(0, 1, n, dtype=torch.float64)


class Fixed(AlphaChooser):
    """An alpha chooser defined here only: always alpha 3."""

    def __init__(self):
        pass

    def choose(self, sampler, sde, statistics, **kw):
        return AlphaChoice(3.0, 0.0, {3.0: 0.0}, sampler.steps_on(sde)[0], method="fixed")


def test_a_new_predictor_schedule_or_chooser_is_one_class():
    """No table to register in: PC runs a predictor's own update, a sigma-space sampler a schedule's own sigmas,
    resolve_alpha a chooser's own choice."""
    sde = VESDE(0.01, 10.0, 100)
    score = gaussian(sde)
    one_level = VESDE(0.01, 10.0, 1)
    z = [torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    half = PC(steps=1, predictor=HalfStep(), corrector=None, denoise=False)(
        score, one_level, (2, 1, 8, 8), noise=RecordedNoise(z))
    x_T = one_level.prior_sampling(z[0])
    full = EulerMaruyama().update(StepContext(one_level, score, Preconditioner(), RecordedNoise(z[1:])), x_T,
                                  torch.ones(2))[0]
    torch.testing.assert_close(half.x, x_T + (full - x_T) / 2)
    assert half.nfe == 1
    heun = EDMHeun(steps=4, schedule=Geometric())
    lo = 0.01 * 1000 ** 2.5e-4  # sigma(eps) of VE 0.01..10, eps = 1e-5 * 100 / 4 (speed_up rule)
    assert heun.sigmas(sde) == pytest.approx([10 * (lo / 10) ** (i / 3) for i in range(4)] + [0.0], rel=1e-12)
    assert heun(score, sde, (2, 1, 8, 8), noise=SeededNoise([0, 1])).nfe == 7
    stats = ImageStatistics.from_moments(10, torch.ones(1, 8, 8), torch.full((1, 8, 8), 0.5), torch.ones(1, 8, 8))
    resolved, choice = resolve_alpha(PC(steps=5, pds=PDS(alpha=Fixed())), sde, stats)
    assert resolved == PC(steps=5, pds=PDS(alpha=3.0)) and choice["method"] == "fixed"


# ---- nothing accepted and ignored (issue 32 item 3) -------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda: PC(predictor=None, pds=PDS(predictor="consistent")),
     r"pc: PDS predictor 'consistent' preconditions the PC predictor, and this sampler has none \(corrector only\); "
     r"use PDS\(predictor='official'\) or give a predictor"),
    (lambda: PC(predictor=AncestralSampling(), pds=PDS(predictor="consistent")),
     r"pc: PDS predictor 'consistent' exists for ReverseDiffusion and EulerMaruyama, not AncestralSampling"),
    (lambda: PC(predictor=None, denoise=False),
     r"pc: denoise=False has no effect without a predictor .*; remove denoise or give a predictor"),
    (lambda: Restart(schedule=SDEGrid()),
     r"restart: Restart runs its restarts over Karras levels with the schedule's rho; SDEGrid has no rho; "
     r"use schedule: Karras"),
    (lambda: EDMStochastic(S_tmin=0.05, S_tmax=50.0, S_noise=1.003),
     r"edmstochastic: S_tmin 0.05, S_tmax 50.0, S_noise 1.003 has no effect with S_churn 0 \(no noise is added\); "
     r"set S_churn > 0 or remove it"),
    (lambda: DPMSolverPP2MSDE(eta=0.0, S_noise=1.003),
     r"dpmsolverpp2msde: S_noise 1.003 has no effect at eta 0 \(no noise is added\); remove S_noise or raise eta"),
    (lambda: EDMHeun(eps=1e-3, schedule=Karras(sigma_min=0.02)),
     r"edmheun: eps 0.001 has no effect: the schedule's sigma_min 0.02 sets the last level; remove eps or sigma_min"),
], ids=["consistent-without-predictor", "consistent-ancestral", "denoise-without-predictor", "restart-sdegrid",
        "churn-window-without-churn", "s_noise-at-eta-0", "eps-with-sigma_min"])
def test_a_setting_without_effect_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_restrict_subspace_without_a_task_is_refused_where_the_sampler_meets_it():
    """PDS restrict acts on a task's known part only (issue 31 item 14): refused with no task, used with one."""
    sde = VESDE(0.01, 10.0, 100)
    stats = ImageStatistics.from_moments(10, torch.ones(1, 8, 8), torch.full((1, 8, 8), 0.5), torch.ones(1, 8, 8))
    sampler = PC(steps=3, pds=PDS(restrict="subspace"))
    with pytest.raises(ValueError, match=r"pc: PDS restrict 'subspace' keeps M off the known part of a task "
                                         r"\(inpainting, colorization\), and this run has no task; remove restrict "
                                         r"\(or set it to 'project'\) or sample a task"):
        generate(sampler, gaussian(sde), sde, [0, 1], (1, 8, 8), statistics=stats)
    with pytest.raises(ValueError, match=r"pc: PDS restrict 'subspace' .* this run has no task"):
        SamplingCallback([sampler])  # validation samples fill in no task: refused when configured
    known = KnownPart(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8).tril())
    assert generate(sampler, gaussian(sde), sde, [0, 1], (1, 8, 8), statistics=stats, known=known).nfe == 6


# ---- configs rebuilt behind the allow-list (a checkpoint is untrusted) ---------------------------------------
def test_from_config_checks_every_nested_class_path_before_importing_any(tmp_path, monkeypatch):
    (tmp_path / "h6a_untrusted.py").write_text("import pathlib\npathlib.Path(__file__).with_name('ran').touch()\n"
                                               "class Chooser:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = PC(pds=PDS()).config()
    spec["init_args"]["pds"]["init_args"]["alpha"] = {"class_path": "h6a_untrusted.Chooser", "init_args": {}}
    with pytest.raises(ValueError, match=r"refused model.sampler.pds.alpha 'h6a_untrusted.Chooser' unimported: it is "
                                         r"outside the allow-list"):
        Sampler.from_config(spec, what="model.sampler")
    with pytest.raises(ValueError, match="refused model.sampler.pds.alpha 'h6a_untrusted.Chooser' unimported"):
        sampler_from_hparam(spec)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(ValueError, match=r"refused model.sampler.pds.alpha 'h6a_untrusted.Chooser': it is not a "
                                         r"subclass of pds_lightning.sampling.base.Component"):
        sampler_from_hparam(spec, allowed=["h6a_untrusted"])  # allowed: imported, then refused as no component
    assert (tmp_path / "ran").exists()


def test_from_config_rebuilds_every_component():
    for sampler in [PC(steps=4, predictor=AncestralSampling(), corrector=ALD(0.2, 2), pds=PDS("space", Pilot(4))),
                    EDMStochastic(steps=5, S_churn=4.0, schedule=Karras(5.0, 0.02, 9.0), corrector=Langevin(),
                                  pds=PDS("freq", 3.0), name="s"),
                    Restart(intervals=[[0.1, 0.4], [1.0, 3.0]], repeats=[1, 2], inner_steps=[2, 4]),
                    ProbabilityFlowODE(speed_up=4.0, denoise=False), DPMSolverPP2M(schedule=SDEGrid())]:
        assert Sampler.from_config(sampler.config()) == sampler
        assert Sampler.from_config(sampler) is sampler
    with pytest.raises(ValueError, match=r"model.sampler wants a Sampler component or \{'class_path', 'init_args'\}, "
                                         r"got \{'n_steps': 3\}"):
        Sampler.from_config({"n_steps": 3}, what="model.sampler")
    with pytest.raises(ValueError, match=r"model.sampler init_args do not fit pds_lightning.sampling.PC: .*'levels'"):
        Sampler.from_config({"class_path": "pds_lightning.sampling.PC", "init_args": {"levels": 3}},
                            what="model.sampler")
