"""Import of score_sde checkpoints: reference scores, strictness and clear errors."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pds_lightning.convert import ConversionError, convert_score_sde, main, resolve_config
from pds_lightning.models import NCSNpp, ScoreModel
from pds_lightning.sde import VESDE

from helpers import clean_env

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth"
CONFIG = FIXTURES / "ncsnpp_ve_tiny.yaml"
NET_ARGS = yaml.safe_load(CONFIG.read_text())["model"]["net"]["init_args"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("convert") / "tiny.ckpt"
    convert_score_sde(CHECKPOINT, CONFIG, out)
    return torch.load(out, map_location="cpu", weights_only=True)


def score_with(state_dict, prefix):
    net = NCSNpp(**NET_ARGS)
    net.load_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, strict=True)
    expected = torch.load(FIXTURES / "ncsnpp_ve_tiny.expected.pt", weights_only=True)
    with torch.no_grad():
        score = ScoreModel(net.eval(), VESDE(0.01, 50.0, 20))(expected["x"], expected["t"])
    return score, expected


@pytest.mark.parametrize("prefix, key", [("net.", "score_raw"), ("ema_net.", "score_ema")])
def test_converted_weights_reproduce_reference_scores(converted, prefix, key):
    score, expected = score_with(converted["state_dict"], prefix)
    assert (score - expected[key]).abs().max() <= 1e-4


def test_checkpoint_layout_for_score_module(converted):
    sd = converted["state_dict"]
    source = torch.load(CHECKPOINT, weights_only=True)
    assert converted["global_step"] == source["step"] == 7
    assert int(sd["ema_num_updates"]) == source["ema"]["num_updates"]
    assert float(sd["stat_count"]) == 0.0
    for name in ("stat_power_mean", "stat_mean", "stat_sq_mean"):
        assert sd[name].shape == (3, 16, 16) and sd[name].dtype == torch.float32
    n_net = sum(k.startswith("net.") for k in sd)
    assert n_net == sum(k.startswith("ema_net.") for k in sd) == len(source["model"])
    assert len(sd) == 2 * n_net + 5
    # frozen Fourier weights and the sigmas buffer are not averaged: raw values in both copies
    assert torch.equal(sd["ema_net.all_modules.0.W"], sd["net.all_modules.0.W"])
    # the Adam state keeps score_sde's indices, which follow net.parameters()
    params = converted["optimizer_states"][0]["param_groups"][0]["params"]
    assert params == list(range(len(list(NCSNpp(**NET_ARGS).parameters()))))


def test_official_statistics_fill_the_buffers(tmp_path):
    # the official pair (a spectrum peaked at DC and Hermitian-symmetric, as the preconditioner requires)
    freq, space = np.load(FIXTURES / "pds_freq_stat.npy"), np.load(FIXTURES / "pds_space_stat.npy")
    np.save(tmp_path / "freq.npy", freq)
    np.save(tmp_path / "space.npy", space)
    out = convert_score_sde(CHECKPOINT, CONFIG, tmp_path / "s.ckpt", tmp_path / "freq.npy", tmp_path / "space.npy")
    sd = torch.load(out, weights_only=True)["state_dict"]
    assert float(sd["stat_count"]) > 0
    assert torch.allclose(sd["stat_power_mean"], torch.expm1(torch.from_numpy(freq)))
    assert torch.equal(sd["stat_sq_mean"], torch.from_numpy(space))
    with pytest.raises(ConversionError, match="both"):
        convert_score_sde(CHECKPOINT, CONFIG, tmp_path / "x.ckpt", freq_stat=tmp_path / "freq.npy")


def test_truncated_file_is_reported(tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(CHECKPOINT.read_bytes()[: 200_000])
    with pytest.raises(ConversionError, match="truncated"):
        convert_score_sde(bad, CONFIG, tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def write_config(tmp_path, **changes):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["model"]["net"]["init_args"].update(changes)
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_wrong_config_lists_differences(tmp_path):
    with pytest.raises(ConversionError) as err:
        convert_score_sde(CHECKPOINT, write_config(tmp_path, nf=16), tmp_path / "out.ckpt")
    assert "mis-shaped" in str(err.value) and "all_modules.0.W" in str(err.value)
    with pytest.raises(ConversionError) as err:
        convert_score_sde(CHECKPOINT, write_config(tmp_path, num_res_blocks=2), tmp_path / "out.ckpt")
    assert "missing" in str(err.value) and "unexpected" in str(err.value)
    with pytest.raises(ConversionError, match="unknown config 'no_such_model'.*ve_cifar10_ncsnpp_continuous"):
        convert_score_sde(CHECKPOINT, "no_such_model", tmp_path / "out.ckpt")


def tampered(tmp_path, edit):
    ckpt = torch.load(CHECKPOINT, weights_only=True)
    edit(ckpt)
    path = tmp_path / "tampered.pth"
    torch.save(ckpt, path)
    return path


def test_tampered_key_is_named(tmp_path):
    def rename(ckpt):
        ckpt["model"]["module.all_modules.4.Conv_9.weight"] = ckpt["model"].pop("module.all_modules.4.Conv_0.weight")

    with pytest.raises(ConversionError) as err:
        convert_score_sde(tampered(tmp_path, rename), CONFIG, tmp_path / "out.ckpt")
    assert "all_modules.4.Conv_0.weight" in str(err.value) and "all_modules.4.Conv_9.weight" in str(err.value)


def test_missing_or_short_ema_is_reported(tmp_path):
    with pytest.raises(ConversionError, match="no EMA"):
        convert_score_sde(tampered(tmp_path, lambda c: c.pop("ema")), CONFIG, tmp_path / "out.ckpt")
    with pytest.raises(ConversionError, match="shadow params"):
        convert_score_sde(tampered(tmp_path, lambda c: c["ema"]["shadow_params"].pop()), CONFIG,
                          tmp_path / "out.ckpt")


def test_command_line(tmp_path, capsys):
    out = tmp_path / "cli.ckpt"
    assert main([str(CHECKPOINT), "--config", str(CONFIG), "--output", str(out)]) == 0
    assert out.is_file() and list(tmp_path.iterdir()) == [out]  # no temporary file left behind
    with pytest.raises(SystemExit) as exit_info:
        main([str(CHECKPOINT), "--config", "no_such_model", "--output", str(out)])
    assert exit_info.value.code == 2 and "unknown config" in capsys.readouterr().err


def test_shipped_names_resolve():
    assert resolve_config("ve/cifar10_ncsnpp_continuous") == resolve_config("ve_cifar10_ncsnpp_continuous")
    assert resolve_config("ve_cifar10_ncsnpp_continuous").is_file()


def test_score_module_resumes_from_the_converted_checkpoint(tmp_path):
    import lightning as L

    from pds_lightning.convert import instantiate
    from pds_lightning.module import ScoreModule

    out = convert_score_sde(CHECKPOINT, CONFIG, tmp_path / "tiny.ckpt")
    cfg = yaml.safe_load(CONFIG.read_text())["model"]
    module = ScoreModule(net=instantiate(cfg["net"]), sde=instantiate(cfg["sde"]), continuous=True, image_size=16,
                         num_channels=3, centered=False)
    module.load_state_dict(torch.load(out, weights_only=True)["state_dict"], strict=True)
    trainer = L.Trainer(max_steps=8, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(torch.rand(4, 3, 16, 16), batch_size=4),
                ckpt_path=out)
    assert trainer.global_step == 8  # continues score_sde's step 7
    assert int(module.ema_num_updates) == 8


def checkpoint_with_adam_moments(tmp_path):
    """The fixture checkpoint (step 7) with the Adam state of 7 real updates, as score_sde saves it."""
    from pds_lightning.convert import instantiate

    ckpt = torch.load(CHECKPOINT, weights_only=True)
    net = instantiate(yaml.safe_load(CONFIG.read_text())["model"]["net"])
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.9, 0.999), eps=1e-8)
    g = torch.Generator().manual_seed(0)
    for _ in range(ckpt["step"]):
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=g) if p.requires_grad else None
        opt.step()
    ckpt["optimizer"] = opt.state_dict()
    torch.save(ckpt, tmp_path / "moments.pth")
    return tmp_path / "moments.pth", ckpt["optimizer"]["state"]


class RecordUpdate:
    """Adam state, parameters and rate around the first update after the resume."""

    def __init__(self):
        import lightning as L

        rec = self

        class Hooks(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                rec.before = {i: {k: v.clone() for k, v in s.items()} for i, s in
                              enumerate(trainer.optimizers[0].state[p] for p in pl_module.net.parameters())}
                rec.params = [p.detach().clone() for p in pl_module.net.parameters()]

            def on_before_optimizer_step(self, trainer, pl_module, optimizer):
                rec.lr = optimizer.param_groups[0]["lr"]

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                params = list(pl_module.net.parameters())
                rec.grads = [None if p.grad is None else p.grad.clone() for p in params]  # clipped, as used
                rec.after = [trainer.optimizers[0].state[p] for p in params]
                rec.new_params = [p.detach().clone() for p in params]

        self.callback = Hooks()


@pytest.mark.parametrize("warmup", [5, 20])  # step 7: past the warm-up / inside it
def test_resume_from_converted_checkpoint_continues_schedule_and_adam(tmp_path, warmup):
    """The first update after `fit --ckpt_path converted.ckpt` at score_sde step 7 uses score_sde's rate
    lr * min(7 / warmup, 1) and continues Adam from the saved moments (step count 8 in the bias correction)."""
    import lightning as L

    from pds_lightning.convert import instantiate
    from pds_lightning.module import ScoreModule

    source, adam = checkpoint_with_adam_moments(tmp_path)
    out = convert_score_sde(source, CONFIG, tmp_path / "tiny.ckpt")
    cfg = yaml.safe_load(CONFIG.read_text())["model"]
    lr, b1, b2, eps = 2e-4, 0.9, 0.999, 1e-8
    module = ScoreModule(net=instantiate(cfg["net"]), sde=instantiate(cfg["sde"]), image_size=16, num_channels=3,
                         lr=lr, warmup=warmup, adam_eps=eps)
    rec = RecordUpdate()
    trainer = L.Trainer(max_steps=8, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                        default_root_dir=tmp_path, callbacks=[rec.callback])
    data = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=4), ckpt_path=out)

    assert trainer.global_step == 8
    rate = lr * min(7 / warmup, 1.0)
    assert rec.lr == pytest.approx(rate, rel=1e-12)
    assert len(adam) == sum(p.requires_grad for p in module.net.parameters())
    for i, state in adam.items():  # the moments score_sde saved are the ones resumed from
        assert float(rec.before[i]["step"]) == 7
        assert torch.equal(rec.before[i]["exp_avg"], state["exp_avg"])
        assert torch.equal(rec.before[i]["exp_avg_sq"], state["exp_avg_sq"])
        g, after = rec.grads[i], rec.after[i]
        m = b1 * state["exp_avg"] + (1 - b1) * g
        v = b2 * state["exp_avg_sq"] + (1 - b2) * g ** 2
        assert float(after["step"]) == 8
        # Absolute slack of a few float32 ulps of the summands: m can cancel to near zero.
        f32 = torch.finfo(torch.float32).eps
        torch.testing.assert_close(after["exp_avg"], m, rtol=1e-5,
                                   atol=4 * f32 * (state["exp_avg"].abs().max() + g.abs().max()).item())
        torch.testing.assert_close(after["exp_avg_sq"], v, rtol=1e-5,
                                   atol=4 * f32 * (state["exp_avg_sq"].abs().max() + (g ** 2).max()).item())
        step = -rate * (m / (1 - b1 ** 8)) / ((v / (1 - b2 ** 8)).sqrt() + eps)
        ulp = torch.finfo(torch.float32).eps * rec.params[i].abs().max().item()  # rounding of p + step
        torch.testing.assert_close(rec.new_params[i] - rec.params[i], step, rtol=1e-3, atol=2 * ulp)


# ---- untrusted input through the command (issue 23 item 8) -------------------------------------------------------
def convert_command(capsys, *args) -> tuple[int, str]:
    """Exit status and stderr of `pds-lightning convert-score-sde ARGS` (the entry point `python -m pds_lightning`
    runs, in this process)."""
    from pds_lightning.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert-score-sde", *map(str, args)])
    return exit_info.value.code, capsys.readouterr().err


BAD_CONFIGS = {
    "syntax": ("model: [\n", r"config .*bad\.yaml is not valid YAML: .*\(line 2, column 1\)"),
    "top_list": ("- model\n- net\n", r"config .*bad\.yaml holds a YAML list, not a mapping with a 'model:' section"),
    "python_tag": ("model: !!python/object/apply:os.system ['touch pwned']\n",
                   r"YAML tag that is not plain data: .*python/object/apply:os\.system.*\(line 1, column 8\)"),
    "alias_bomb": ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
                   + "".join(f"{b}: &{b} [{', '.join(['*' + a] * 10)}]\n" for a, b in zip("abcde", "bcdef")),
                   r"aliases \(\*name\) expand to more than 100,000 values"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_file_is_one_line(tmp_path, capsys, monkeypatch, case):
    text, message = BAD_CONFIGS[case]
    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    code, err = convert_command(capsys, CHECKPOINT, "--config", tmp_path / "bad.yaml", "--output", "out.ckpt")
    assert code == 2 and re.search(message, err), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # nothing written, no tag ran


def config_with(tmp_path, edit) -> Path:
    cfg = yaml.safe_load(CONFIG.read_text())
    edit(cfg["model"])
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


BAD_SETTINGS = {
    "unknown_init_arg": (lambda m: m["net"]["init_args"].update(nfx=8),
                         r"model\.net init_args do not fit pds_lightning\.models\.NCSNpp: .*'nfx'; it takes \['nf', "),
    "unknown_model_key": (lambda m: m.update(ema_decayy=0.9), r"model: has unknown keys \['ema_decayy'\]"),
    "sampler_method": (lambda m: m.update(sampler={"method": "pds_fast"}),
                       r"model: settings are refused \(flat sampler settings: unknown method 'pds_fast'; choose one of "),
    "no_sde": (lambda m: m.pop("sde"), r"has no 'model: sde: class_path:' section"),
    # issue 31 item 13: a field of the wrong type or value is named (it was a TypeError / "math domain error")
    "net_field_type": (lambda m: m["net"]["init_args"].update(nf="abc"),
                       r"^error: model\.net init_args: nf wants int, got 'abc'\n$"),
    "net_field_value": (lambda m: m["net"]["init_args"].update(sigma_max=-5),
                        r"^error: model\.net \(pds_lightning\.models\.NCSNpp\): NCSNpp: sigma_min and sigma_max must be "
                        r"finite numbers > 0 .*, got sigma_min=0\.01, sigma_max=-5\n$"),
    "sde_field_value": (lambda m: m["sde"]["init_args"].update(sigma_max=-5),
                        r"^error: model\.sde \(pds_lightning\.sde\.VESDE\): need 0 < sigma_min < sigma_max, got 0\.01, -5"),
    # issue 31 item 1: a config's compile backend is code it picks
    "compile_backend": (lambda m: m.update(compile={"backend": "mybackend"}),
                        r"model\.compile: compile backend 'mybackend' is refused from a file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETTINGS))
def test_a_setting_that_would_not_load_is_refused_at_conversion(tmp_path, capsys, case):
    edit, message = BAD_SETTINGS[case]
    out = tmp_path / "out.ckpt"
    code, err = convert_command(capsys, CHECKPOINT, "--config", config_with(tmp_path, edit), "--output", out)
    assert code == 2 and re.search(message, err), err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("case", ["zero", "nan"])
def test_a_statistic_without_a_preconditioner_is_refused_at_conversion(tmp_path, capsys, case):
    freq = np.zeros((3, 16, 16), np.float32)
    if case == "nan":
        freq = np.random.default_rng(0).uniform(0, 3, (3, 16, 16)).astype(np.float32)
        freq[1, 2, 3] = np.nan
    np.save(tmp_path / "freq.npy", freq)
    np.save(tmp_path / "space.npy", np.full((3, 16, 16), 0.25, np.float32))
    out = tmp_path / "out.ckpt"
    code, err = convert_command(capsys, CHECKPOINT, "--config", CONFIG, "--output", out, "--freq-stat",
                                tmp_path / "freq.npy", "--space-stat", tmp_path / "space.npy")
    expected = "statistic is zero everywhere" if case == "zero" else r"freq\.npy contains non-finite values"
    assert code == 2 and re.search(expected, err), err
    assert not out.exists()


def test_output_that_is_the_input_is_refused(tmp_path, capsys, monkeypatch):
    source = tmp_path / "model.pth"
    source.write_bytes(CHECKPOINT.read_bytes())
    (tmp_path / "link.pth").symlink_to(source)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    for output in (source, "../model.pth", tmp_path / "link.pth"):
        code, err = convert_command(capsys, "../link.pth", "--config", CONFIG, "--output", output)
        assert code == 2 and f"--output {output} is the input file ../link.pth" in err, err
    assert source.read_bytes() == CHECKPOINT.read_bytes()
    code, err = convert_command(capsys, source, "--config", CONFIG, "--output", tmp_path / "sub" / "new.ckpt")
    assert code == 0 and (tmp_path / "sub" / "new.ckpt").is_file()


def test_python_m_reports_a_bad_config_in_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("- a list\n")
    proc = subprocess.run([sys.executable, "-m", "pds_lightning", "convert-score-sde", str(CHECKPOINT), "--config",
                           "bad.yaml", "--output", "out.ckpt"], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == "error: config bad.yaml holds a YAML list, not a mapping with a 'model:' section; " \
                          "see configs/score_sde/*.yaml\n"


# ---- outputs: whole, named as what they hold, never over an input (issue 31 items 2-4) ---------------------------
@pytest.mark.parametrize("flag", [[], ["--safetensors"]], ids=["plain", "safetensors"])
def test_an_output_named_safetensors_is_refused_not_written_as_a_pickle(tmp_path, capsys, flag):
    out = tmp_path / "m.safetensors"
    code, err = convert_command(capsys, CHECKPOINT, "--config", CONFIG, "--output", out, *flag)
    assert code == 2 and err == (f"error: --output {out}: the converted checkpoint is a Lightning .ckpt (a zip), not "
                                 f".safetensors; give {tmp_path / 'm.ckpt'} and pass --safetensors to also write {out} "
                                 "(weights and settings, no optimizer state)\n"), err
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_replaced_only_with_force_and_an_input_never(tmp_path, capsys):
    out = tmp_path / "m.ckpt"
    out.write_text("mine")
    code, err = convert_command(capsys, CHECKPOINT, "--config", CONFIG, "--output", out)
    assert code == 2 and err == f"error: --output {out} exists; pass --force to replace it or give another output path\n"
    assert out.read_text() == "mine"
    assert convert_command(capsys, CHECKPOINT, "--config", CONFIG, "--output", out, "--force")[0] == 0
    assert torch.load(out, weights_only=True)["global_step"] == 7
    # a checkpoint kept under a .safetensors name: --safetensors would write its weights over it, --force or not
    source = tmp_path / "released.safetensors"
    source.write_bytes(CHECKPOINT.read_bytes())
    code, err = convert_command(capsys, source, "--config", CONFIG, "--output", tmp_path / "released.ckpt",
                                "--safetensors", "--force")
    assert code == 2 and err == (f"error: the --safetensors file {source} is the input file {source}; writing it would "
                                 "replace the input: give another output path\n"), err
    assert source.read_bytes() == CHECKPOINT.read_bytes() and not (tmp_path / "released.ckpt").exists()


@pytest.mark.parametrize("failing", [1, 2])  # the checkpoint, then its .safetensors
def test_a_full_disk_leaves_neither_file_and_names_the_target(tmp_path, capsys, monkeypatch, failing):
    from helpers import disk_full_on_write

    out = tmp_path / "m.ckpt"
    monkeypatch.setattr(os, "write", disk_full_on_write(failing, starting_with=b""))
    code, err = convert_command(capsys, CHECKPOINT, "--config", CONFIG, "--output", out, "--safetensors")
    target = out if failing == 1 else out.with_suffix(".safetensors")
    assert code == 2 and err == f"error: [Errno 28] No space left on device: '{target}'\n", err
    assert list(tmp_path.iterdir()) == []  # no output, no temp file
