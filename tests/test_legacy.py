"""The older sampler formats (pds_lightning/legacy.py): the flat settings of old checkpoints and configs, read only
by `sampler_from_hparam` and refused field by field where a field would be ignored (issue 24's five examples), and
the previous round's component step names. Their samples: tests/sampling/test_legacy_bytes.py."""

import math

import pytest
from helpers import tiny_module

from pds_lightning.alpha import Pilot, Surrogate
from pds_lightning.legacy import SamplerSettings, is_flat, sampler_from_flat, sampler_from_hparam
from pds_lightning.sampling import (ALD, PC, PDS, EDMHeun, EDMStochastic, Euler, EulerMaruyama, Karras, Langevin,
                                    ReverseDiffusion, Sampler, SDEGrid, generate)
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


def test_an_old_config_with_a_flat_sampler_gets_one_line_with_the_component_form(tmp_path, capsys):
    """`pds-lightning predict --config old.yaml`: one stderr line, exit 1, naming the component that replaces the
    flat dict (jsonargparse alone answers with a multi-line error about union types)."""
    from pds_lightning.cli import main

    config = tmp_path / "old.yaml"
    config.write_text("model:\n  sampler:\n    name: em12\n    predictor: euler_maruyama\n    corrector: none\n"
                      "    n_steps: 12\n    preconditioner: freq\n    alpha: 3.0\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(config)])
    lines = capsys.readouterr().err.strip().splitlines()
    component = ('{"class_path": "pds_lightning.sampling.pc.PC", "init_args": {"steps": 12, "predictor": '
                 '{"class_path": "pds_lightning.sampling.predictors.EulerMaruyama"}, "corrector": null, "pds": '
                 '{"class_path": "pds_lightning.sampling.pds.PDS", "init_args": {"filters": "freq", "alpha": 3.0}}, '
                 '"name": "em12"}}')
    assert exit_info.value.code == 1 and lines == [
        f"pds-lightning: error: model.sampler in {config} is a flat sampler dict of older versions, which configs no "
        f"longer take; write it as the component {component} (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)"]
    import json
    assert Sampler.from_config(json.loads(component)) == PC(steps=12, predictor=EulerMaruyama(), corrector=None,
                                                           pds=PDS(filters="freq", alpha=3.0), name="em12")


def test_a_partial_sampler_override_in_a_second_config_is_not_taken_for_the_flat_form():
    """jsonargparse merges `model.sampler: {steps: 5}` into the class given before it: no refusal there."""
    assert not is_flat({"steps": 5, "speed_up": 1.0, "name": "x"})
    assert is_flat({"n_steps": 5}) and is_flat({"predictor": "euler_maruyama"}) and is_flat({"preconditioner": "both"})
    assert not is_flat({"class_path": "pds_lightning.sampling.PC"}) and not is_flat({"init_args": {"steps": 2}})


@pytest.mark.parametrize("where,args", [
    ("model.sampler in {config}", ["--config", "{config}"]),
    ("--model.sampler.pc_steps", ["--model.sampler.pc_steps", "4"]),
    ("trainer.callbacks[0].init_args.samplers[0] in {callbacks}", ["--config", "{callbacks}"]),
])
def test_the_previous_step_names_in_a_config_or_flag_get_one_line_naming_steps(where, args, tmp_path, capsys):
    from pds_lightning.cli import main

    paths = {"config": tmp_path / "prev.yaml", "callbacks": tmp_path / "callbacks.yaml"}
    paths["config"].write_text("model:\n  sampler:\n    class_path: pds_lightning.sampling.PC\n    init_args:\n"
                               "      pc_steps: 4\n")
    paths["callbacks"].write_text("trainer:\n  callbacks:\n    - class_path: pds_lightning.callbacks.SamplingCallback\n"
                                  "      init_args:\n        samplers:\n          - class_path: pds_lightning.sampling"
                                  ".EDMHeun\n            init_args: {levels: 4}\n")
    old = "levels" if "callbacks" in where else "pc_steps"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict"] + [a.format(**paths) for a in args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and lines == [
        f"pds-lightning: error: {where.format(**paths)} names the step count '{old}', which is now 'steps' for every "
        "sampler; rename it to steps (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)"]
