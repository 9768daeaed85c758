"""The older sampler formats (pds_lightning/legacy.py): the flat settings of old checkpoints and configs, read only
by `sampler_from_hparam` and refused field by field where a field would be ignored (issue 24's five examples), and
the previous round's component step names. Their samples: tests/sampling/test_legacy_bytes.py."""

import math

import pytest
from helpers import tiny_module

from pds_lightning.alpha import Pilot, Surrogate
from pds_lightning.legacy import SamplerSettings, sampler_from_flat, sampler_from_hparam
from pds_lightning.sampling import (ALD, PC, PDS, EDMHeun, EDMStochastic, Euler, Karras, Langevin, SDEGrid,
                                    ReverseDiffusion, generate)
from pds_lightning.sde import VESDE

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


@pytest.mark.parametrize("flat,message", [
    (dict(corrector="ald", step_size="batch"), "step_size='batch' does not apply to method 'pc'"),
    (dict(corrector="none", snr=0.3), "snr=0.3 does not apply to method 'pc'"),
    (dict(preconditioner="both", alpha=3.0, auto_method="pilot"), "auto_method='pilot' does not apply"),
    (dict(method="euler", snr=0.3), "snr=0.3 does not apply to method 'euler'.*ode_corrector 'langevin'"),
    (dict(method="dpmpp_2m", schedule="sde", rho=3.0), "rho=3.0 does not apply.*sets the 'karras' schedule"),
    (dict(method="edm_heun", pds_predictor="consistent", preconditioner="both", ode_corrector="langevin"),
     "pds_predictor='consistent' does not apply to method 'edm_heun'"),
    (dict(method="pc", ode_corrector="langevin"), "ode_corrector='langevin' does not apply.*sigma-space methods"),
    (dict(method="edm_heun", schedule="linear"), "unknown schedule 'linear'"),
    (dict(method="edm_heun", schedule="sde", sigma_max=10.0), "sigma_max=10.0 does not apply"),
    (dict(method="euler", ode_corrector="yes"), "unknown ode_corrector 'yes'"),
    (dict(method="heun"), "unknown method 'heun'"),
    (dict(predictor="rd"), "unknown predictor 'rd'"),
    (dict(corrector="hmc"), "unknown corrector 'hmc'"),
    (dict(alpha="auto"), "alpha='auto' does not apply.*needs a preconditioner"),
    (dict(alpha="strong", preconditioner="freq"), "a number > 1 or 'auto'"),
    (dict(method="ode", preconditioner="freq"), "method 'ode' cannot use a PDS preconditioner"),
    (dict(alpha="auto", preconditioner="freq", auto_method="sweep"), "unknown auto_method 'sweep'"),
])
def test_more_silent_no_ops_and_bad_values_of_the_flat_form_are_refused(flat, message):
    with pytest.raises(ValueError, match=message):
        sampler_from_flat(flat)


def test_flat_unknown_key_is_named():
    with pytest.raises(ValueError, match="unknown key 'n_step'"):
        sampler_from_flat({"n_step": 3})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_flat_snr_nan_inf_and_nonpositive_are_refused(bad):
    with pytest.raises(ValueError, match="Langevin: snr must be a finite number > 0"):
        SamplerSettings(snr=bad)


def test_flat_translation_and_component_config_round_trip():
    flat = dict(name="x", method="edm_stochastic", n_steps=6, S_churn=40.0, ode_corrector="langevin", snr=0.1,
                n_corrector_steps=2, preconditioner="space", alpha=3.0, schedule="karras", rho=5.0)
    sampler = sampler_from_flat(flat)
    assert sampler == EDMStochastic(steps=6, S_churn=40.0, corrector=Langevin(0.1, 2), schedule=Karras(rho=5.0),
                                    pds=PDS(filters="space", alpha=3.0), name="x")
    assert sampler_from_hparam(sampler.config()) == sampler
    assert sampler_from_hparam(flat) == sampler
    auto = sampler_from_flat(dict(preconditioner="both", alpha="auto", auto_method="pilot", pilot_samples=4))
    assert auto.pds.alpha == Pilot(4)
    assert sampler_from_flat(dict(preconditioner="both", alpha="auto")).pds.alpha == Surrogate()
    assert sampler_from_flat(dict(method="euler", schedule="sde", n_steps=3)) == Euler(steps=3, schedule=SDEGrid(), name="pc")
    assert sampler_from_flat(dict(corrector="ald", n_corrector_steps=3)) == PC(corrector=ALD(steps_per_level=3))


def test_previous_round_component_step_names_load_as_steps():
    """Checkpoints of the previous round stored PC's `pc_steps` and the sigma-space samplers' `levels`."""
    old_pc = {"class_path": "pds_lightning.sampling.pc.PC",
              "init_args": {"pc_steps": 10, "pds": {"class_path": "pds_lightning.sampling.PDS", "init_args": {}}}}
    old_heun = {"class_path": "pds_lightning.sampling.edm_heun.EDMHeun", "init_args": {"levels": 5}}
    assert sampler_from_hparam(old_pc) == PC(steps=10, pds=PDS())
    assert sampler_from_hparam(old_heun) == EDMHeun(steps=5)


def test_only_sampler_from_hparam_reads_the_flat_form():
    """ScoreModule and generate take components (or their config); the flat dict only where checkpoints are read."""
    flat = dict(n_steps=3, preconditioner="both")
    with pytest.raises(ValueError, match=r"model.sampler wants a Sampler component or \{'class_path', 'init_args'\}"):
        tiny_module(sampler=flat)
    with pytest.raises(ValueError, match="generate wants a sampler component .* got dict"):
        generate(flat, None, VESDE(), [0], (1, 8, 8))
    assert tiny_module(sampler=PC(steps=3)).sampler == PC(steps=3)
    assert sampler_from_hparam(flat) == PC(steps=3, pds=PDS(filters="both"), name="pc",
                                           predictor=ReverseDiffusion())
