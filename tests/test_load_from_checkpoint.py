"""`ScoreModule.load_from_checkpoint(path)` with no config (checkpoints of fit and of the converter), the one-call
`generate_images`, and class paths in checkpoints / configs refused unless they name a network or an SDE."""

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import clean_env
from pds_lightning.classpath import import_class, instantiate
from pds_lightning.convert import ConversionError, convert_score_sde
from pds_lightning.models import NCSNpp
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC
from pds_lightning.sde import SDE, VESDE

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY_CONFIG = ROOT / "tests" / "configs" / "tiny.yaml"
FIXTURE_CONFIG = FIXTURES / "ncsnpp_ve_tiny.yaml"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A checkpoint written by `pds-lightning fit` (3 steps of the tiny config)."""
    tmp = tmp_path_factory.mktemp("fit")
    proc = subprocess.run([sys.executable, "-m", "pds_lightning", "fit", "--config", str(TINY_CONFIG),
                           "--trainer.default_root_dir", str(tmp), "--data.stats.cache_dir", "",
                           "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                           "--trainer.callbacks.dirpath", str(tmp / "ckpt"), "--trainer.callbacks.save_last", "true"],
                          cwd=tmp, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tmp / "ckpt" / "last.ckpt"


def module_from_config(config: Path, state_dict) -> ScoreModule:
    """The reference: the module built from the config's model section (as the CLI does), with the weights."""
    cfg = yaml.safe_load(config.read_text())["model"]
    images = yaml.safe_load(config.read_text()).get("data", {}).get("images", {})
    geometry = {k: images.get(key, cfg.get(k)) for k, key in (("image_size", "size"), ("num_channels", "num_channels"))
                if images.get(key, cfg.get(k))}
    extra = {k: cfg[k] for k in ("continuous", "centered") if k in cfg}
    sampler = cfg.get("sampler")  # {'class_path', 'init_args'}
    module = ScoreModule(net=instantiate(cfg["net"]), sde=instantiate(cfg["sde"]), sampler=sampler, **geometry, **extra)
    module.load_state_dict(state_dict, strict=True)
    return module


@pytest.mark.slow
def test_fit_checkpoint_loads_in_one_call_and_samples_the_trained_model(fitted):
    checkpoint = torch.load(fitted, weights_only=True)
    model = ScoreModule.load_from_checkpoint(fitted)
    assert model.hparams.net == yaml.safe_load(TINY_CONFIG.read_text())["model"]["net"] | {
        "init_args": model.hparams.net["init_args"]}
    assert isinstance(model.net, NCSNpp) and isinstance(model.sde, VESDE) and model.sde.N == 100
    assert model.image_shape == (1, 16, 16) and model.sampler.steps == 10 and model.sampler.pds.alpha == 5.0
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key
    assert float(model.stat_count) == 32  # the statistics travel in the checkpoint

    reference = module_from_config(TINY_CONFIG, checkpoint["state_dict"])
    expected = reference.sample(reference.sampler, torch.arange(6)).x
    images = model.generate_images(range(6))
    assert images.dtype == torch.float32 and images.shape == (6, 1, 16, 16)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    # batches of 4 + 2: a seed's noise does not depend on its batch; float32 convolutions of another batch size
    # may round differently (seen: 1 pixel in 1536 off by 8e-6), hence 1e-4 and not bitwise
    torch.testing.assert_close(model.generate_images([0, 1, 2, 3, 4, 5], batch_size=4), expected, rtol=0, atol=1e-4)
    other = PC(name="vanilla", steps=5)
    torch.testing.assert_close(model.generate_images(3, sampler=other), reference.sample(other, torch.arange(3)).x,
                               rtol=0, atol=0)


def test_converted_checkpoint_loads_in_one_call(tmp_path):
    out = convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", FIXTURE_CONFIG, tmp_path / "tiny.ckpt")
    state = torch.load(out, weights_only=True)["state_dict"]
    model = ScoreModule.load_from_checkpoint(out)
    cfg = yaml.safe_load(FIXTURE_CONFIG.read_text())["model"]
    assert model.hparams.net == cfg["net"] and model.hparams.sde == cfg["sde"]
    assert model.image_shape == (3, 16, 16) and model.sde.N == 20 and model.ema_net.training is False
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key
    reference = module_from_config(FIXTURE_CONFIG, state)
    sampler = PC(name="pc5", steps=5)
    torch.testing.assert_close(model.generate_images(range(2), sampler=sampler),
                               reference.sample(sampler, torch.arange(2)).x, rtol=0, atol=0)
    # overrides win over the saved hyper-parameters
    assert ScoreModule.load_from_checkpoint(out, sampler=sampler).sampler == sampler


def test_a_module_built_from_instances_asks_for_its_network(tmp_path):
    cfg = yaml.safe_load(FIXTURE_CONFIG.read_text())["model"]
    module = ScoreModule(net=NCSNpp(**cfg["net"]["init_args"]), sde=VESDE(num_scales=20), image_size=16)
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(ValueError, match="does not name its model.net .* pass net="):
        ScoreModule.load_from_checkpoint(path)
    loaded = ScoreModule.load_from_checkpoint(path, net=NCSNpp(**cfg["net"]["init_args"]), sde=VESDE(num_scales=20))
    assert torch.equal(loaded.ema_net.sigmas, module.ema_net.sigmas)


# ---- untrusted class paths --------------------------------------------------------------------------------------
def malicious_specs(marker: Path):
    """Class paths that would create `marker` if they were ever called."""
    return [
        ("subprocess.Popen", {"args": ["touch", str(marker)]}),
        ("os.system", {"command": f"touch {marker}"}),
        ("builtins.exec", {"source": f"open({str(marker)!r}, 'w').close()"}),
    ]


@pytest.mark.parametrize("field", ["net", "sde"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_checkpoint_naming_a_non_model_class_is_refused_before_it_runs(tmp_path, field, which):
    out = convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", FIXTURE_CONFIG, tmp_path / "tiny.ckpt")
    checkpoint = torch.load(out, weights_only=True)
    marker = tmp_path / "pwned"
    class_path, init_args = malicious_specs(marker)[which]
    checkpoint["hyper_parameters"][field] = {"class_path": class_path, "init_args": init_args}
    torch.save(checkpoint, out)
    with pytest.raises(ValueError, match=f"refused model.{field} '{class_path}' unimported: it is outside the allow"):
        ScoreModule.load_from_checkpoint(out)
    assert not marker.exists()


# A module that announces its import by writing a file (what any code in an untrusted module could do).
MARKING_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
from pds_lightning.models import NCSNpp


class Net(NCSNpp):
    \"\"\"A real network: outside the project, it loads only where the user allows it.\"\"\"
"""


@pytest.fixture
def untrusted_net(tmp_path, monkeypatch):
    """A converted checkpoint whose model.net names `module.Net` of an importable module next to it (on
    sys.path and in the working directory, as a file shipped beside a download would be)."""
    out = convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", FIXTURE_CONFIG, tmp_path / "tiny.ckpt")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PDS_LIGHTNING_ALLOWED_CLASSES", raising=False)

    def make(module: str, class_path: str | None = None) -> tuple[Path, Path]:
        marker = tmp_path / f"{module}.imported"
        (tmp_path / f"{module}.py").write_text(MARKING_MODULE.format(marker=str(marker)))
        checkpoint = torch.load(out, weights_only=True)
        checkpoint["hyper_parameters"]["net"]["class_path"] = class_path or f"{module}.Net"
        torch.save(checkpoint, out)
        return out, marker

    yield make
    for name in [n for n in sys.modules if n.startswith("evilmod") or n.startswith("outside_net")]:
        del sys.modules[name]


def test_a_module_next_to_the_checkpoint_is_refused_unimported(untrusted_net):
    ckpt, marker = untrusted_net("evilmod")
    with pytest.raises(ValueError, match="refused model.net 'evilmod.Net' unimported: it is outside the allow-list"
                                         ".*allowed=\\['evilmod.Net'\\]"):
        ScoreModule.load_from_checkpoint(ckpt)
    assert not marker.exists() and "evilmod" not in sys.modules


def test_this_is_refused_unimported(untrusted_net, capsys, monkeypatch):
    ckpt, _ = untrusted_net("evilmod", "this.Foo")
    monkeypatch.delitem(sys.modules, "this", raising=False)  # importing `this` prints the Zen of Python
    with pytest.raises(ValueError, match="refused model.net 'this.Foo' unimported"):
        ScoreModule.load_from_checkpoint(ckpt)
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out


def test_a_network_outside_the_allow_list_loads_only_when_allowed(untrusted_net, monkeypatch):
    ckpt, marker = untrusted_net("outside_net")
    with pytest.raises(ValueError, match="refused model.net 'outside_net.Net' unimported"):
        ScoreModule.load_from_checkpoint(ckpt)
    assert not marker.exists()
    reference = ScoreModule.load_from_checkpoint(ckpt, net={"class_path": "pds_lightning.models.NCSNpp",
                                                            "init_args": torch.load(ckpt, weights_only=True)
                                                            ["hyper_parameters"]["net"]["init_args"]})
    model = ScoreModule.load_from_checkpoint(ckpt, allowed=["outside_net.Net"])
    assert marker.exists() and type(model.net).__module__ == "outside_net"
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in model.state_dict().items())
    monkeypatch.setenv("PDS_LIGHTNING_ALLOWED_CLASSES", "some.other, outside_net")  # a module prefix, by variable
    assert type(ScoreModule.load_from_checkpoint(ckpt).net).__name__ == "Net"


def test_a_project_name_re_exporting_a_foreign_class_is_refused():
    with pytest.raises(ValueError, match="refused model.net 'pds_lightning.cli.LightningCLI' unimported: it is "
                                         "defined in lightning.pytorch.cli"):
        import_class("pds_lightning.cli.LightningCLI", "model.net", torch.nn.Module,
                     ("pds_lightning", "torch.nn"))


def test_convert_refuses_a_config_naming_a_module_next_to_it(tmp_path, monkeypatch, capsys):
    from pds_lightning.cli import main

    marker = tmp_path / "evilmod.imported"
    (tmp_path / "evilmod.py").write_text(MARKING_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cfg = yaml.safe_load(FIXTURE_CONFIG.read_text())
    cfg["model"]["net"]["class_path"] = "evilmod.Net"
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-score-sde", str(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth"), "--config", "evil.yaml",
              "--output", "out.ckpt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "refused model.net 'evilmod.Net' unimported" in err[0]
    assert not marker.exists() and "evilmod" not in sys.modules and not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("field", ["net", "sde"])
def test_a_converter_config_naming_a_non_model_class_is_refused_before_it_runs(tmp_path, field):
    marker = tmp_path / "pwned"
    cfg = yaml.safe_load(FIXTURE_CONFIG.read_text())
    cfg["model"][field] = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}
    config = tmp_path / "evil.yaml"
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConversionError, match=f"refused model.{field} 'subprocess.Popen'"):
        convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", config, tmp_path / "out.ckpt")
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


def test_import_class_checks_the_base_only_when_asked():
    assert import_class("pds_lightning.sde.VESDE", "model.sde", SDE) is VESDE
    assert import_class("subprocess.Popen") is subprocess.Popen  # no base: any class (the evaluate option)
    with pytest.raises(ValueError, match="refused model.sde 'pds_lightning.models.NCSNpp'"):
        import_class("pds_lightning.models.NCSNpp", "model.sde", SDE)
    with pytest.raises(ValueError, match="wants a mapping with 'class_path'"):
        instantiate("pds_lightning.sde.VESDE", "model.sde", SDE)


# ---- issue 31 item 1: every class path of a file (sampler and its parts too) is checked before import ---------
EVIL = {"class_path": "evilmod.Net"}
PC_PATH, PDS_PATH = "pds_lightning.sampling.PC", "pds_lightning.sampling.PDS"
SAMPLERS_NAMING_EVILMOD = {  # where the class path sits -> the sampler hyper-parameter holding it
    "sampler": ("model.sampler", EVIL),
    "predictor": ("model.sampler.predictor", {"class_path": PC_PATH, "init_args": {"predictor": EVIL}}),
    "corrector": ("model.sampler.corrector", {"class_path": PC_PATH, "init_args": {"corrector": EVIL}}),
    "pds": ("model.sampler.pds", {"class_path": PC_PATH, "init_args": {"pds": EVIL}}),
    "alpha chooser": ("model.sampler.pds.alpha", {"class_path": PC_PATH, "init_args": {
        "pds": {"class_path": PDS_PATH, "init_args": {"alpha": EVIL}}}}),
    "schedule": ("model.sampler.schedule", {"class_path": "pds_lightning.sampling.EDMHeun",
                                            "init_args": {"schedule": EVIL}}),
}


@pytest.fixture(scope="module")
def converted_bytes(tmp_path_factory) -> bytes:
    """The converted tiny checkpoint, converted once for the tests below (each writes its own edited copy)."""
    out = convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", FIXTURE_CONFIG,
                            tmp_path_factory.mktemp("converted") / "tiny.ckpt")
    return out.read_bytes()


@pytest.fixture
def evilmod(tmp_path, monkeypatch):
    """`evilmod.py` importable from the working directory (as a file shipped beside a download); its import writes
    the returned marker file. Cleans sys.modules after."""
    marker = tmp_path / "evilmod.imported"
    (tmp_path / "evilmod.py").write_text(MARKING_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PDS_LIGHTNING_ALLOWED_CLASSES", raising=False)
    yield marker
    sys.modules.pop("evilmod", None)


def edited_checkpoint(converted_bytes: bytes, path: Path, **hparams) -> Path:
    checkpoint = torch.load(io.BytesIO(converted_bytes), weights_only=True)
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, path)
    return path


def refused_unimported(what: str, name: str = "evilmod.Net") -> str:
    return f"refused {what} '{name}' unimported: it is outside the allow-list"


@pytest.mark.parametrize("case", SAMPLERS_NAMING_EVILMOD, ids=str)
def test_a_sampler_naming_a_module_next_to_the_checkpoint_is_refused_unimported(converted_bytes, evilmod, tmp_path,
                                                                                 case):
    what, sampler = SAMPLERS_NAMING_EVILMOD[case]
    ckpt = edited_checkpoint(converted_bytes, tmp_path / "sampler_evil.ckpt", sampler=sampler)
    with pytest.raises(ValueError, match=refused_unimported(what)):
        ScoreModule.load_from_checkpoint(ckpt)
    assert not evilmod.exists() and "evilmod" not in sys.modules


def test_a_sampler_in_safetensors_metadata_is_refused_unimported(converted_bytes, evilmod, tmp_path):
    from pds_lightning.safetensors_io import save_checkpoint_weights

    checkpoint = torch.load(edited_checkpoint(converted_bytes, tmp_path / "x.ckpt",
                                              sampler=SAMPLERS_NAMING_EVILMOD["alpha chooser"][1]), weights_only=True)
    path = save_checkpoint_weights(checkpoint, tmp_path / "sampler_evil.safetensors")
    with pytest.raises(ValueError, match=refused_unimported("model.sampler.pds.alpha")):
        ScoreModule.load_from_checkpoint(path)
    assert not evilmod.exists() and "evilmod" not in sys.modules


def test_export_of_a_checkpoint_naming_a_foreign_sampler_is_one_line_and_imports_nothing(converted_bytes, evilmod,
                                                                                           tmp_path, capsys):
    from pds_lightning.cli import main

    ckpt = edited_checkpoint(converted_bytes, tmp_path / "sampler_evil.ckpt", sampler=EVIL)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(ckpt)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1 and refused_unimported("model.sampler") in err[0], err
    assert not evilmod.exists() and "evilmod" not in sys.modules and not (tmp_path / "sampler_evil.safetensors").exists()


def test_a_converter_config_naming_a_foreign_sampler_is_refused_unimported(evilmod, tmp_path, capsys):
    from pds_lightning.cli import main

    cfg = yaml.safe_load(FIXTURE_CONFIG.read_text())
    cfg["model"]["sampler"] = SAMPLERS_NAMING_EVILMOD["corrector"][1]
    (tmp_path / "evil.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main(["convert-score-sde", str(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth"), "--config", "evil.yaml",
              "--output", "out.ckpt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and refused_unimported("model.sampler.corrector") in err[0]
    assert not evilmod.exists() and "evilmod" not in sys.modules and not (tmp_path / "out.ckpt").exists()


def test_a_sampler_this_foo_is_refused_unimported(converted_bytes, tmp_path, capsys, monkeypatch):
    ckpt = edited_checkpoint(converted_bytes, tmp_path / "this.ckpt", sampler={"class_path": "this.Foo"})
    monkeypatch.delitem(sys.modules, "this", raising=False)  # importing `this` prints the Zen of Python
    with pytest.raises(ValueError, match=refused_unimported("model.sampler", "this.Foo")):
        ScoreModule.load_from_checkpoint(ckpt)
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out


def test_allowed_reaches_the_network_inside_edm_precond(tmp_path, monkeypatch):
    """`allowed=` of load_from_checkpoint reaches the spec EDMPrecond builds itself, as the variable does."""
    marker = tmp_path / "outside_net.imported"
    (tmp_path / "outside_net.py").write_text(MARKING_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PDS_LIGHTNING_ALLOWED_CLASSES", raising=False)
    tiny = dict(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, image_size=8,
                num_channels=1, centered=True, scale_by_sigma=False)
    edm = "pds_lightning.models.edm.EDMPrecond"
    sde = {"class_path": "pds_lightning.sde.VPSDE", "init_args": {}}
    module = ScoreModule.from_hyper_parameters(
        net={"class_path": edm, "init_args": {"net": {"class_path": "pds_lightning.models.NCSNpp", "init_args": tiny}}},
        sde=sde, image_size=8, num_channels=1, centered=True)
    hparams = {**module.hparams, "net": {"class_path": edm, "init_args": {
        "net": {"class_path": "outside_net.Net", "init_args": tiny}}}}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, tmp_path / "edm.ckpt")
    try:
        with pytest.raises(ValueError, match="refused model.net.net 'outside_net.Net' unimported"):
            ScoreModule.load_from_checkpoint(tmp_path / "edm.ckpt")
        assert not marker.exists()
        loaded = ScoreModule.load_from_checkpoint(tmp_path / "edm.ckpt", allowed=["outside_net.Net"])
        assert marker.exists() and type(loaded.net.net).__module__ == "outside_net"
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in loaded.state_dict().items())
    finally:
        sys.modules.pop("outside_net", None)


# `compile` of a file is untrusted: a backend (or inductor options, which can name a compiler) is code it picks
COMPILE_REFUSED = {
    "backend": ({"backend": "evilmod_backend"}, "compile backend 'evilmod_backend' is refused from a file"),
    "options": ({"options": {"cpp.cxx": ["/tmp/evil-cc"]}}, "compile option 'options' is refused from a file"),
    "unknown keyword": ({"module_hook": 1}, "compile option 'module_hook' is refused from a file"),
    "not plain": ({"fullgraph": "yes"}, "compile option fullgraph='yes' is not of the plain type"),
}


@pytest.mark.parametrize("case", COMPILE_REFUSED, ids=str)
def test_a_checkpoint_compile_option_that_picks_code_is_refused(converted_bytes, tmp_path, case):
    option, message = COMPILE_REFUSED[case]
    ckpt = edited_checkpoint(converted_bytes, tmp_path / "compile.ckpt", compile=option)
    with pytest.raises(ValueError, match=re.escape(f"{ckpt}: model.compile: {message}")):
        ScoreModule.load_from_checkpoint(ckpt)
    # the caller's own choice is not the file's: it is taken as given
    assert ScoreModule.load_from_checkpoint(ckpt, compile=option).hparams["compile"] == option


def test_a_plain_compile_option_of_a_checkpoint_loads(converted_bytes, tmp_path):
    option = {"backend": "inductor", "mode": "max-autotune", "fullgraph": False, "dynamic": None}
    ckpt = edited_checkpoint(converted_bytes, tmp_path / "compile.ckpt", compile=option)
    assert ScoreModule.load_from_checkpoint(ckpt).hparams["compile"] == option


def test_an_old_flat_checkpoint_loads_its_optimizer_keys_as_model_optimizer():
    """tiny_flat_sampler.ckpt (flat lr / beta1 / adam_eps / weight_decay / warmup / grad_clip) loads with them as
    one Adam, the one it trained with."""
    model = ScoreModule.load_from_checkpoint(FIXTURES / "tiny_flat_sampler.ckpt")
    assert model.hparams["optimizer"] == {
        "class_path": "pds_lightning.optim.Adam",
        "init_args": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0, "warmup": 2,
                      "grad_clip": 1.0}}
    assert "lr" not in model.hparams and model.optimizer.lr_at(1) == 0.0005


def test_checkpoint_reading_and_rebuilding_live_in_checkpoints(tmp_path):
    """checkpoints.load_module is what ScoreModule.load_from_checkpoint runs, and its one-line read errors are
    checkpoints.CheckpointError; module.py keeps none of the reading code."""
    import pds_lightning.module
    from pds_lightning.checkpoints import CheckpointError, load_module

    model = load_module(ScoreModule, FIXTURES / "tiny_flat_sampler.ckpt")
    same = ScoreModule.load_from_checkpoint(FIXTURES / "tiny_flat_sampler.ckpt")
    assert type(model) is ScoreModule and model.hparams == same.hparams
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in model.state_dict().items())
    (tmp_path / "bad.ckpt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"^checkpoint .*bad\.ckpt was refused unread: it holds pickled "):
        ScoreModule.load_from_checkpoint(tmp_path / "bad.ckpt")
    assert not {"read_checkpoint", "check_compile", "CheckpointError"} & set(vars(pds_lightning.module))
