"""The `pds-lightning` command: shipped configs parse, and fit -> predict runs end to end on CPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import clean_env, flow_bomb, predict_error
from pds_lightning.sampling import PC, PDS, EDMHeun, Euler

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def run_cli(*args, cwd, check=True):
    proc = subprocess.run([sys.executable, "-m", "pds_lightning.cli", *map(str, args)], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc


def print_config(config, capsys) -> str:
    from pds_lightning.cli import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_round_trips_through_print_config(config, tmp_path, capsys):
    first = print_config(config, capsys)
    (tmp_path / "printed.yaml").write_text(first)
    assert print_config(tmp_path / "printed.yaml", capsys) == first


@pytest.mark.parametrize("config", [c for c in CONFIGS if "cifar10" in c.name or c.name == "demo.yaml"],
                         ids=lambda p: p.name)
@pytest.mark.slow
def test_shipped_config_instantiates(config):
    """Building the real classes catches what parsing cannot (a bad init arg, a geometry mismatch)."""
    from pds_lightning.cli import cli_main

    cli = cli_main(["--config", str(config), "--trainer.logger", "false"], run=False)
    assert cli.model.image_shape == (cli.datamodule.images.num_channels,) + 2 * (cli.datamodule.images.size,)
    assert cli.model.net.image_size == cli.datamodule.images.size


@pytest.mark.slow
def test_fit_then_predict_from_checkpoint_alone(tmp_path):
    config = ROOT / "tests" / "configs" / "tiny.yaml"
    run_cli("fit", "--config", config, "--trainer.default_root_dir", tmp_path, "--data.stats.cache_dir",
            tmp_path / "stats", cwd=tmp_path)
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    ckpt = torch.load(ckpts[-1], weights_only=True)
    state = ckpt["state_dict"]
    assert any(k.startswith("ema_net.") for k in state)
    assert float(state["stat_count"]) == 32
    assert state["stat_power_mean"].shape == (1, 16, 16) and float(state["stat_power_mean"].sum()) > 0
    assert int(state["ema_num_updates"]) == 3
    differs = [k for k in state if k.startswith("net.") and not torch.equal(state[k], state["ema_" + k])]
    assert differs, "EMA weights equal the raw weights after training"

    # TensorBoard: loss, lr, gradient norm, both filters, and the data's radial power spectrum.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pds_lightning.metrics import radial_power_spectrum

    events = EventAccumulator(str(tmp_path / "runs" / "tiny"), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"preconditioner/frequency_filter", "preconditioner/space_filter"} <= set(tags["images"])
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss"} <= set(tags["scalars"])
    logged = [e.value for e in events.Scalars("data/radial_log10_power")]
    expected = radial_power_spectrum(state["stat_power_mean"].double()).mean(0).log10()
    torch.testing.assert_close(torch.tensor(logged, dtype=torch.float64), expected, rtol=1e-5, atol=1e-5)

    out = tmp_path / "samples"
    run_cli("predict", "--config", config, "--ckpt_path", ckpts[-1], "--trainer.logger", "false",
            "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter", "--trainer.callbacks.output_dir", out,
            cwd=tmp_path)
    pngs = sorted(p.name for p in out.rglob("*.png"))
    assert pngs == [f"{s:06d}.png" for s in range(6)]

    # The files are the module's own sampling of the same seeds, byte for byte; the manifest has its NFE.
    import json

    from pds_lightning.images import encode_png, to_uint8
    from pds_lightning.writer import sample_path
    from pds_lightning.cli import cli_main

    module = cli_main(["--config", str(config), "--trainer.logger", "false"], run=False).model
    module.load_state_dict(state, strict=True)
    result = module.sample(module.sampler, torch.arange(6))
    for seed, image in enumerate(to_uint8(result.x)):
        assert sample_path(out, seed).read_bytes() == encode_png(image), seed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["nfe_per_sample"] == result.nfe == 2 * 10  # 10 PC steps: one predictor + one corrector call


@pytest.mark.slow
def test_predict_with_alpha_auto_records_the_choice_in_the_manifest(tmp_path):
    import json

    config = ROOT / "tests" / "configs" / "tiny.yaml"
    run_cli("fit", "--config", config, "--trainer.default_root_dir", tmp_path,
            "--data.stats.cache_dir", tmp_path / "stats", cwd=tmp_path)
    ckpt = sorted(tmp_path.rglob("*.ckpt"))[-1]
    out = tmp_path / "auto"
    run_cli("predict", "--config", config, "--ckpt_path", ckpt, "--trainer.logger", "false",
            "--data.predict.seeds", "0-1", "--model.sampler.pds.alpha", "pds_lightning.alpha.Surrogate",
            "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter",
            "--trainer.callbacks.output_dir", out, cwd=tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    choice = manifest["resolved"]["alpha_auto"]
    assert choice["n_steps"] == 10 and choice["value"] == min(choice["table"].values())
    assert manifest["settings"]["init_args"]["pds"]["init_args"]["alpha"]["class_path"].endswith(".Surrogate")
    assert choice["method"] == "surrogate" and choice["nfe"] == 0

    # The measured (pilot) choice from the same checkpoint: one spectral error per pilot candidate.
    from pds_lightning.alpha import PILOT_CANDIDATES

    out = tmp_path / "pilot"
    run_cli("predict", "--config", config, "--ckpt_path", ckpt, "--trainer.logger", "false",
            "--data.predict.seeds", "0-1", "--model.sampler.pds.alpha", "pds_lightning.alpha.Pilot",
            "--model.sampler.pds.alpha.samples", "2", "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter",
            "--trainer.callbacks.output_dir", out, cwd=tmp_path)
    choice = json.loads((out / "manifest.json").read_text())["resolved"]["alpha_auto"]
    assert choice["method"] == "pilot" and choice["criterion"] == "pilot_spectral_error"
    assert len(choice["table"]) == len(PILOT_CANDIDATES) and choice["value"] == min(choice["table"].values())
    assert choice["nfe"] == len(PILOT_CANDIDATES) * 2 * 20  # 10 PC steps = 20 NFE per pilot sample


def alias_bomb(levels: int, width: int = 10) -> str:
    """A "billion laughs" config: each level a list of `width` aliases to the level above (width**levels values)."""
    lines = ["trainer:", "  l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_config_is_refused_in_one_line_before_it_expands(tmp_path, capsys):
    """Issue 23 item 15: jsonargparse copies every expanded value (a million here: ~10 s; ten million: 216 s and
    1.6 GB), so the config is measured on PyYAML's shared node graph first."""
    import time

    from pds_lightning.cli import main

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb(levels=6))
    assert bomb.stat().st_size < 500
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "tests/configs/tiny.yaml"), "--config", str(bomb)])
    assert time.perf_counter() - start < 2.0
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert f"config {bomb} is refused: its aliases (*name) expand to more than 100,000 values" in err
    with pytest.raises(SystemExit) as exit_info:  # a nested config file (jsonargparse reads it too)
        main(["fit", "--config", str(ROOT / "tests/configs/tiny.yaml"), "--data", str(bomb)])
    assert exit_info.value.code == 1 and f"config {bomb} is refused" in capsys.readouterr().err
    # a config that shares a value through an alias, as configs do, is read as before
    shared = tmp_path / "shared.yaml"
    shared.write_text("trainer:\n  max_steps: &steps 2\n  val_check_interval: *steps\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "tests/configs/tiny.yaml"), "--config", str(shared), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "max_steps: 2\n" in out and "val_check_interval: 2\n" in out



def test_an_alias_bomb_inside_a_string_is_refused_in_one_line(tmp_path, capsys):
    """Issue 31 item 8: jsonargparse parses a string value as YAML again, from the command line or inside a
    config (10 levels: 10**10 values; it ran past 60 s and 3 GB). Every YAML parse of the CLI is bounded."""
    import time

    from pds_lightning.cli import cli_main, main
    from pds_lightning.yamlfile import ConfigFileError

    tiny = ROOT / "tests/configs/tiny.yaml"
    bomb = flow_bomb(levels=10)
    quoted, inner, outer = tmp_path / "quoted.yaml", tmp_path / "inner.yaml", tmp_path / "outer.yaml"
    quoted.write_text(f"model: '{bomb}'\n")
    inner.write_text(f"lr: '{bomb}'\n")
    outer.write_text(f"model: {inner}\n")  # a config naming a config that holds the bomb in a float's string
    shown = "config value '{l0: &l0 [lol, lol, lol, lol, lol, lol, ...' is refused"
    # (arguments, message, seconds): what the command line names is refused before the parser is built (~0.05 s
    # measured); a config named inside a config is refused by the parser's loader, after the ~1-2 s the parser
    # takes to build on 2 busy cores (unbounded, the parse ran for minutes).
    cases = {"--model": (["--model", bomb], shown, 1.0), "--model.lr": ([f"--model.lr={bomb}"], shown, 1.0),
             "quoted in a config": (["--config", quoted], f"config {quoted} is refused", 1.0),
             "in a config a config names": (["--config", outer], """config value "lr: '{l0: &l0 [lol, lol, lol, """
                                                                 """lol, lol, ..." is refused""", 15.0)}
    for case, (args, message, seconds) in cases.items():
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(tiny), *map(str, args), "--print_config"])
        assert time.perf_counter() - start < seconds, case
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.count("\n") == 1, (case, err)
        assert err.startswith(f"pds-lightning: error: {message}: its aliases (*name) expand to more than 100,000 "
                              "values (an alias bomb?)"), (case, err)
    with pytest.raises(ConfigFileError, match="config value .* is refused"):  # the Python API: the parser's loader
        cli_main(["fit", "--config", str(tiny), "--model", bomb, "--print_config"])
    # YAML with aliases in a value, small as configs are, is read as before
    shared = tmp_path / "shared.yaml"
    shared.write_text("trainer: '{max_steps: &n 2, val_check_interval: *n}'\n")
    for args in (["--config", shared], ["--trainer", "{max_steps: &n 4, val_check_interval: *n}"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(tiny), *map(str, args), "--print_config"])
        assert exit_info.value.code in (0, None)
        out = capsys.readouterr().out
        steps = 2 if args[0] == "--config" else 4
        assert f"max_steps: {steps}\n" in out and f"val_check_interval: {steps}\n" in out


# Issue 31 item 14: argparse took an option's prefix for the option (`--data.seed 0-3` ran as `--data.predict.seeds`).
ABBREVIATED = {
    "predict": (["predict", "--config", ROOT / "tests/configs/tiny.yaml", "--data.seed", "0-3", "--print_config"],
                "error: unrecognized arguments: --data.seed 0-3"),
    "convert-score-sde": (["convert-score-sde", "in.pth", "--config", "x.yaml", "--output", "o.ckpt", "--safe"],
                          "pds-lightning convert-score-sde: error: unrecognized arguments: --safe"),
    "convert-diffusers": (["convert-diffusers", "in", "o.ckpt", "--statistics-f", "images"],
                          "pds-lightning convert-diffusers: error: unrecognized arguments: --statistics-f images"),
    "export": (["export", "in.ckpt", "--out", "o.safetensors"],
               "pds-lightning export: error: unrecognized arguments: --out o.safetensors"),
    "evaluate": (["evaluate", "samples", "--ref", "mnist"], "pds-lightning evaluate: error: unrecognized arguments: "
                                                            "--ref mnist"),
    "configs": (["configs", "write", "demo", "--forc"], "pds-lightning configs: error: unrecognized arguments: --forc"),
}


@pytest.mark.parametrize("command", ABBREVIATED)
def test_an_abbreviated_option_is_refused_naming_it(command, tmp_path, capsys, monkeypatch):
    from pds_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    args, message = ABBREVIATED[command]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message
    assert list(tmp_path.iterdir()) == []


# ---- issue 31 item 12: the README's sampler switch starts from the new class's defaults --------------------------
def switched(*args: str):
    """The predict sampler of configs/demo.yaml (PC named pds_100, with PDS) after the command-line `args`."""
    from pds_lightning.cli import cli_main

    return cli_main(["--config", str(ROOT / "configs" / "demo.yaml"), *args], run=False).model


SWITCHES = {  # command line -> (the sampler built, the name the manifest records)
    "class path": (["--model.sampler", "pds_lightning.sampling.EDMHeun", "--model.sampler.steps", "18"],
                   EDMHeun(steps=18), "edmheun"),
    "class name, pds null": (["--model.sampler", "EDMHeun", "--model.sampler.steps", "18", "--model.sampler.pds",
                              "null"], EDMHeun(steps=18), "edmheun"),
    "inline spec": (["--model.sampler", "{class_path: pds_lightning.sampling.Euler, init_args: {steps: 5}}"],
                    Euler(steps=5), "euler"),
    # the same class under another spelling is no switch: the config's fields stay
    "same class": (["--model.sampler", "pds_lightning.sampling.pc.PC", "--model.sampler.steps", "7"],
                   PC(steps=7, pds=PDS(filters="both", alpha=5.0), name="pds_100"), "pds_100"),
}


@pytest.mark.parametrize("case", SWITCHES, ids=str)
def test_switching_the_sampler_class_on_the_command_line_starts_from_its_defaults(case):
    from pds_lightning.writer import settings_dict

    args, expected, name = SWITCHES[case]
    model = switched(*args)
    assert model.sampler == expected
    assert settings_dict(model)["init_args"]["name"] == name  # what predict's manifest records


def test_dpmpp_2m_sde_refuses_pds_filters_it_cannot_shape_in_one_line(capsys):
    """Issue 33: DPMSolverPP2MSDE shapes its noise per eigenmode of M M^T, which 'both' filters do not have."""
    err = predict_error(capsys, "--model.sampler", "pds_lightning.sampling.DPMSolverPP2MSDE", "--model.sampler.steps",
                        "3", "--model.sampler.pds", "pds_lightning.sampling.PDS")
    assert ("PDS filters 'both' cannot shape the noise of DPMSolverPP2MSDE (M M^T = C S^2 C is diagonal in no single "
            "basis, so its per-mode integrator has no closed form); choose PDS filters 'freq' or 'space'") in err


def test_an_old_config_with_flat_optimizer_keys_and_task_kind_still_loads(tmp_path):
    """A config of before model.optimizer / the task components (flat lr, beta1, ..., data.task: {kind: ...}) loads as
    the same Adam and the Colorize task; the new form sets Adam's beta2, which the flat keys never could."""
    import yaml

    from pds_lightning.cli import cli_main
    from pds_lightning.data.tasks import Colorize

    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    del config["model"]["optimizer"]
    config["model"].update(lr=0.002, beta1=0.8, adam_eps=1e-7, warmup=3, grad_clip=0.5)
    config["data"]["task"] = {"kind": "colorize", "source": "mnist", "indices": "0-1"}
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(config))
    with pytest.warns(DeprecationWarning, match=r"^data.predict.task kind: colorize is deprecated"):
        cli = cli_main(["--config", str(old), "--trainer.logger", "false"], run=False)
    assert cli.model.hparams["optimizer"] == {
        "class_path": "pds_lightning.optim.Adam",
        "init_args": {"lr": 0.002, "betas": [0.8, 0.999], "eps": 1e-7, "weight_decay": 0.0, "warmup": 3,
                      "grad_clip": 0.5}}
    assert type(cli.datamodule.predict.task) is Colorize and cli.datamodule.predict.task.indices == "0-1"
    new = cli_main(["--config", str(ROOT / "tests" / "configs" / "tiny.yaml"), "--model.optimizer.init_args.betas",
                    "[0.5, 0.99]", "--trainer.logger", "false"], run=False).model
    assert new.configure_optimizers().defaults["betas"] == (0.5, 0.99)
