"""Import of diffusers-format NCSN++ folders: the converted network computes diffusers' own forward (tiny
random-weight UNet2DModels in the ncsnpp layout), the SDE is the scheduler's, and what cannot convert exactly
is refused in one line naming the block or field."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import clean_env

# diffusers: the dev extra (tests only); the converter itself never imports it
from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

from pds_lightning import convert_diffusers as cd
from pds_lightning.convert import ConversionError
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC, Langevin
from pds_lightning.statistics import ImageStatistics

SIZE = 16
SCHEDULER = dict(num_train_timesteps=10, sigma_min=0.01, sigma_max=50.0, snr=0.17, sampling_eps=1e-3, correct_steps=2)
# name -> (block_out_channels, layers_per_block, down blocks, up blocks, center_input_sample)
LAYOUTS = {
    "skip": ((32, 64), 1, ("SkipDownBlock2D",) * 2, ("SkipUpBlock2D",) * 2, False),
    "three_levels": ((16, 32, 32), 2, ("SkipDownBlock2D",) * 3, ("SkipUpBlock2D",) * 3, True),
    # attention converts from 128 channels up (diffusers' AttnSkip blocks normalise in 32 groups)
    "attention": ((32, 128), 1, ("SkipDownBlock2D", "AttnSkipDownBlock2D"), ("AttnSkipUpBlock2D", "SkipUpBlock2D"), True),
}
SIGMAS = torch.tensor([0.01, 0.3, 2.0, 50.0])


def unet(channels, layers, down, up, center, **overrides) -> UNet2DModel:
    """A random-weight NCSN++ UNet2DModel (diffusers' ncsnpp fields; weights perturbed so no layer is trivial)."""
    torch.manual_seed(sum(channels) + layers)
    kwargs = dict(sample_size=SIZE, in_channels=3, out_channels=3, block_out_channels=channels, layers_per_block=layers,
                  down_block_types=down, up_block_types=up, time_embedding_type="fourier", norm_eps=1e-6,
                  mid_block_scale_factor=math.sqrt(2.0), norm_num_groups=None, attention_head_dim=None,
                  center_input_sample=center)
    model = UNet2DModel(**{**kwargs, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def save_flat(model, folder: Path, safe: bool = True) -> Path:
    """The google/ncsnpp-* layout: model and scheduler files at the top, model_index.json naming 'model'."""
    model.save_pretrained(folder, safe_serialization=safe)
    ScoreSdeVeScheduler(**SCHEDULER).save_pretrained(folder)
    index = {"_class_name": "ScoreSdeVePipeline", "model": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", "ScoreSdeVeScheduler"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def converted(request, tmp_path_factory):
    """(diffusers model, converted ScoreModule) per layout; 'attention' is saved as .bin, the others as .safetensors."""
    name = request.param
    model = unet(*LAYOUTS[name])
    folder = save_flat(model, tmp_path_factory.mktemp(name), safe=name != "attention")
    out = cd.convert_diffusers(folder, folder.parent / f"{name}.ckpt")
    return name, model, ScoreModule.load_from_checkpoint(out)


def test_converted_network_computes_diffusers_forward(converted):
    name, model, module = converted
    x = torch.rand(len(SIGMAS), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    t = torch.log(SIGMAS / 0.01) / math.log(50.0 / 0.01)  # VE: sigma(t) = sigma_min (sigma_max / sigma_min)^t
    with torch.no_grad():
        reference = model(x, SIGMAS).sample
        score = module.score_fn(ema=True)(x, t)
        raw = module.net(x, SIGMAS)
    assert relative_error(score, reference) <= 1e-5, name
    assert torch.equal(raw, module.ema_net(x, SIGMAS))  # one released set of weights: net and ema_net alike


def test_converted_sde_and_sampler_are_the_schedulers(converted):
    _, _, module = converted
    scheduler = ScoreSdeVeScheduler(**SCHEDULER)
    n = SCHEDULER["num_train_timesteps"]
    scheduler.set_timesteps(n, SCHEDULER["sampling_eps"])
    scheduler.set_sigmas(n, sampling_eps=SCHEDULER["sampling_eps"])
    sde = module.sde
    assert (sde.sigma_min, sde.sigma_max, sde.N) == (0.01, 50.0, n)
    torch.testing.assert_close(sde.marginal_prob(torch.zeros(n), scheduler.timesteps)[1], scheduler.sigmas.float(),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(sde.discrete_sigmas, scheduler.discrete_sigmas.float(), rtol=1e-6, atol=0)
    s = module.sampler
    assert (s.corrector.snr, s.corrector.steps_per_level, s.eps) == (0.17, 2, 1e-3)
    assert (s.pds.filters, s.pds.alpha) == ("both", 5.0)


def test_both_weight_formats_and_the_old_attention_names_give_the_same_checkpoint(tmp_path):
    model = unet(*LAYOUTS["attention"])
    states = []
    for fmt, safe in (("safe", True), ("bin", False)):
        folder = save_flat(model, tmp_path / fmt, safe=safe)
        states.append(torch.load(cd.convert_diffusers(folder, tmp_path / f"{fmt}.ckpt"), weights_only=True)["state_dict"])
    # files of diffusers < 0.15 name the attention projections query / key / value / proj_attn
    old = {}
    for k, v in model.state_dict().items():
        for new_name, old_name in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            k = k.replace(f".{new_name}.", f".{old_name}.")
        old[k] = v
    assert any(".proj_attn." in k for k in old)
    folder = save_flat(model, tmp_path / "old", safe=False)
    torch.save(old, folder / "diffusion_pytorch_model.bin")
    states.append(torch.load(cd.convert_diffusers(folder, tmp_path / "old.ckpt"), weights_only=True)["state_dict"])
    for other in states[1:]:
        assert other.keys() == states[0].keys()
        assert all(torch.equal(other[k], states[0][k]) for k in other)


def test_pipeline_folder_with_unet_and_scheduler_subfolders(tmp_path):
    model = unet(*LAYOUTS["skip"])
    ScoreSdeVePipeline(unet=model, scheduler=ScoreSdeVeScheduler(**SCHEDULER)).save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "unet" / "config.json").is_file()
    module = ScoreModule.load_from_checkpoint(cd.convert_diffusers(tmp_path / "pipe", tmp_path / "pipe.ckpt"))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert relative_error(module.ema_net(x, SIGMAS[:2]), model(x, SIGMAS[:2]).sample) <= 1e-5
    assert module.sde.N == SCHEDULER["num_train_timesteps"]


def test_attention_below_128_channels_is_refused_and_really_differs(tmp_path, monkeypatch):
    """diffusers' AttnSkipDownBlock2D normalises 64 channels in 32 groups, score_sde in 16: refused, naming the norm;
    converting it anyway (group check off) gives a network that does not compute diffusers' forward."""
    model = unet((32, 64), 1, ("SkipDownBlock2D", "AttnSkipDownBlock2D"), ("AttnSkipUpBlock2D", "SkipUpBlock2D"), False)
    folder = save_flat(model, tmp_path / "m")
    with pytest.raises(ConversionError, match=r"down_blocks\.1\.attentions\.0\.group_norm normalises 64 channels in 32 "
                                              r"groups in diffusers, score_sde's NCSN\+\+ in min\(C // 4, 32\) = 16"):
        cd.convert_diffusers(folder, tmp_path / "m.ckpt")
    monkeypatch.setattr(cd, "check_groups", lambda *args: None)
    module = ScoreModule.load_from_checkpoint(cd.convert_diffusers(folder, tmp_path / "m.ckpt"))
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert relative_error(module.ema_net(x, SIGMAS[:2]), model(x, SIGMAS[:2]).sample) > 1e-3


def test_attn_skip_up_block_grouping_is_checked():
    """AttnSkipUpBlock2D groups its residual blocks' first norm by min(c_in + c_skip // 4, 32): at 16 + 16 channels
    that is 20 groups (score_sde: 8); diffusers cannot even build it, the converter names the norm."""
    config = {"up_block_types": ["AttnSkipUpBlock2D", "SkipUpBlock2D"], "layers_per_block": 1,
              "block_out_channels": [16, 16]}
    block = cd.ResnetBlockBigGAN(torch.nn.SiLU(), in_ch=32, out_ch=16, temb_dim=64)
    with pytest.raises(ConversionError, match=r"up_blocks\.0\.resnets\.0\.norm1 normalises 32 channels in 20 groups"):
        cd.check_groups(config, "up_blocks.0.resnets.0", block)
    # diffusers' own construction fails on it (a GroupNorm whose channels its default 32 groups do not divide)
    with pytest.raises(ValueError, match=r"num_channels \(\d+\) must be divisible by num_groups \(32\)"):
        UNet2DModel(sample_size=SIZE, block_out_channels=(16, 16), layers_per_block=1, time_embedding_type="fourier",
                    down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"), norm_num_groups=None,
                    up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), attention_head_dim=None)


@pytest.mark.parametrize("overrides, message", [
    (dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
          time_embedding_type="positional", norm_num_groups=8),
     r"unsupported block type\(s\) DownBlock2D, AttnDownBlock2D"),
    (dict(attention_head_dim=8), r"attention_head_dim=8 cannot be converted: score_sde's attention has one head"),
    (dict(norm_eps=1e-5), r"norm_eps=1e-05 cannot be converted"),
    (dict(mid_block_scale_factor=1.0), r"mid_block_scale_factor=1.0 cannot be converted"),
])
def test_unsupported_configurations_are_refused(tmp_path, overrides, message):
    model = unet(*LAYOUTS["attention"], **overrides)
    folder = save_flat(model, tmp_path / "m")
    with pytest.raises(ConversionError, match=message):
        cd.convert_diffusers(folder, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    model = unet(*LAYOUTS["skip"])
    folder = save_flat(model, tmp_path / "m", safe=False)
    weights = model.state_dict()
    weights.pop("down_blocks.0.resnets.0.conv1.bias")
    weights["conv_out.weight"] = weights["conv_out.weight"][:, :16]
    weights["extra.weight"] = torch.zeros(1)
    torch.save(weights, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(ConversionError, match=r"missing down_blocks\.0\.resnets\.0\.conv1\.bias; conv_out\.weight has "
                                              r"shape \(3, 16, 3, 3\), expected \(3, 32, 3, 3\); unexpected extra\.weight"):
        cd.convert_diffusers(folder, tmp_path / "m.ckpt")


def test_the_sde_comes_from_the_scheduler_or_from_the_options(tmp_path):
    model = unet(*LAYOUTS["skip"])
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ConversionError, match="no scheduler_config.json; give the model's VE SDE with --sigma-min"):
        cd.convert_diffusers(tmp_path / "bare", tmp_path / "a.ckpt")
    out = cd.convert_diffusers(tmp_path / "bare", tmp_path / "a.ckpt", sigma_min=0.02, sigma_max=90.0, num_scales=7)
    sde = ScoreModule.load_from_checkpoint(out).sde
    assert (sde.sigma_min, sde.sigma_max, sde.N) == (0.02, 90.0, 7)
    folder = save_flat(model, tmp_path / "flat")
    with pytest.raises(ConversionError, match="scheduler_config.json sets the SDE; drop sigma_min"):
        cd.convert_diffusers(folder, tmp_path / "b.ckpt", sigma_min=0.02)
    config = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "DDPMScheduler"}))
    with pytest.raises(ConversionError, match="'DDPMScheduler' is not a ScoreSdeVeScheduler"):
        cd.convert_diffusers(folder, tmp_path / "b.ckpt")


def test_a_scheduler_of_more_steps_than_a_run_may_take_is_refused_before_allocating(tmp_path):
    """Issue 31 item 6: num_train_timesteps 1e12 failed with an allocation error (one table entry per step)."""
    folder = save_flat(unet(*LAYOUTS["skip"]), tmp_path / "m")
    config = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps({**config, "num_train_timesteps": 10**12}))
    with pytest.raises(ValueError, match=r"^scheduler_config\.json num_train_timesteps gives 1,000,000,000,000 steps, "
                                         r"more than the 10,000,000 a run may take .*; lower scheduler_config\.json "
                                         r"num_train_timesteps$"):
        cd.convert_diffusers(folder, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists() and not (tmp_path / "m.yaml").exists()


def write_images(folder: Path, n: int) -> torch.Tensor:
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{i}.png")
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).double() / 255.0


def test_statistics_from_a_folder_and_pds_without_them(tmp_path):
    model = unet(*LAYOUTS["skip"])
    folder = save_flat(model, tmp_path / "m")
    images = write_images(tmp_path / "images", 5)
    module = ScoreModule.load_from_checkpoint(
        cd.convert_diffusers(folder, tmp_path / "s.ckpt", statistics_from=tmp_path / "images"))
    expected = ImageStatistics((3, SIZE, SIZE)).update(images)
    assert float(module.stat_count) == 5
    for name in ("power_mean", "mean", "sq_mean"):
        torch.testing.assert_close(getattr(module, f"stat_{name}"), getattr(expected, name).float(), rtol=1e-6, atol=0)

    bare = ScoreModule.load_from_checkpoint(cd.convert_diffusers(folder, tmp_path / "n.ckpt"))
    with pytest.raises(ValueError, match=r"no data statistics are available; .*convert-diffusers \.\.\. "
                                         r"--statistics-from IMAGE_FOLDER"):
        bare.generate_images([0])
    with pytest.raises(ConversionError, match="is not a folder of images"):
        cd.convert_diffusers(folder, tmp_path / "x.ckpt", statistics_from=tmp_path / "missing")
    with pytest.raises(ConversionError, match="--statistics-images needs --statistics-from"):
        cd.convert_diffusers(folder, tmp_path / "x.ckpt", statistics_images=3)
    subset = ScoreModule.load_from_checkpoint(
        cd.convert_diffusers(folder, tmp_path / "x.ckpt", statistics_from=tmp_path / "images", statistics_images=2))
    assert float(subset.stat_count) == 2


def test_cli_converts_and_predict_samples_what_the_safetensors_model_samples(tmp_path, capsys):
    """The README's two commands: convert-diffusers (with statistics and .safetensors), then predict with the
    written config; the PNGs are those the .safetensors export samples in Python for the same seeds."""
    from pds_lightning.cli import main
    from pds_lightning.images import encode_png, to_uint8
    from pds_lightning.writer import sample_path

    folder = save_flat(unet(*LAYOUTS["skip"]), tmp_path / "ncsnpp-tiny")
    write_images(tmp_path / "images", 4)
    out = tmp_path / "tiny.ckpt"
    with pytest.raises(SystemExit) as done:
        main(["convert-diffusers", str(folder), str(out), "--statistics-from", str(tmp_path / "images"), "--safetensors"])
    assert done.value.code == 0
    assert out.with_suffix(".yaml").is_file() and out.with_suffix(".safetensors").is_file()
    samples = tmp_path / "samples"
    proc = subprocess.run([sys.executable, "-m", "pds_lightning.cli", "predict", "--config", str(out.with_suffix(".yaml")),
                           "--ckpt_path", str(out), "--trainer.logger", "false", "--data.predict.seeds", "0-1",
                           "--trainer.callbacks.output_dir", str(samples)],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shared = ScoreModule.load_from_checkpoint(out.with_suffix(".safetensors"))
    result = shared.sample(shared.sampler, torch.arange(2))
    for seed, image in enumerate(to_uint8(result.x)):
        assert sample_path(samples, seed).read_bytes() == encode_png(image), seed

    capsys.readouterr()
    with pytest.raises(SystemExit) as failed:
        main(["convert-diffusers", str(tmp_path / "nowhere"), str(tmp_path / "x.ckpt")])
    assert failed.value.code == 1
    assert capsys.readouterr().err.startswith(f"pds-lightning: error: model folder {tmp_path / 'nowhere'} does not exist")


def test_python_sampling_from_the_converted_checkpoint_uses_the_statistics(tmp_path):
    folder = save_flat(unet(*LAYOUTS["skip"]), tmp_path / "m")
    write_images(tmp_path / "images", 3)
    module = ScoreModule.load_from_checkpoint(cd.convert_diffusers(folder, tmp_path / "m.ckpt",
                                                                   statistics_from=tmp_path / "images"))
    pds = module.generate_images([0, 1])
    plain = module.generate_images([0, 1], sampler=PC(corrector=Langevin(snr=0.17, steps_per_level=2), eps=1e-3))
    assert pds.shape == (2, 3, SIZE, SIZE) and torch.isfinite(pds).all()
    assert 0.0 <= float(pds.min()) and float(pds.max()) <= 1.0
    assert not torch.equal(pds, plain)  # the preconditioner changes the trajectory


# ---- outputs: no input written over, an existing file only with --force, all files or none (issue 31) -----------
def convert_command(capsys, *args) -> tuple[int, str]:
    """Exit status and stderr of `pds-lightning convert-diffusers ARGS`, in this process."""
    from pds_lightning.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["convert-diffusers", *map(str, args)])
    return done.value.code, capsys.readouterr().err


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_outputs_never_replace_the_model_folder_and_existing_files_only_with_force(tmp_path, capsys):
    folder = save_flat(unet(*LAYOUTS["skip"]), tmp_path / "m")
    before = contents(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    refusals = {  # arguments -> the error line
        (weights,): f"OUTPUT {weights}: the converted checkpoint is a Lightning .ckpt (a zip), not .safetensors; give "
                    f"{weights.with_suffix('.ckpt')} and pass --safetensors to also write {weights}",
        (weights.with_suffix(".ckpt"), "--safetensors", "--force"):
            f"the --safetensors file {weights} is a file of the input folder {folder}; writing it would replace an "
            "input: give another output path",
        (folder / "config.json", "--force"): f"OUTPUT {folder / 'config.json'} is a file of the input folder {folder}",
        (tmp_path / "m.yaml",): f"the predict config {tmp_path / 'm.yaml'} is also OUTPUT {tmp_path / 'm.yaml'}: one "
                                "file cannot be both; give another output name",
    }
    for args, message in refusals.items():
        code, err = convert_command(capsys, folder, *args)
        assert code == 1 and err.count("\n") == 1 and err.startswith(f"pds-lightning: error: {message}"), err
    assert contents(folder) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m"]

    (tmp_path / "m.yaml").write_text("mine")  # an existing predict config (OUTPUT.yaml) is not replaced silently
    code, err = convert_command(capsys, folder, tmp_path / "m.ckpt")
    assert code == 1 and err.startswith(f"pds-lightning: error: the predict config {tmp_path / 'm.yaml'} exists; pass "
                                        "--force to replace it or give another output path"), err
    assert (tmp_path / "m.yaml").read_text() == "mine" and not (tmp_path / "m.ckpt").exists()
    code, _ = convert_command(capsys, folder, tmp_path / "m.ckpt", "--force")
    assert code == 0 and yaml_of(tmp_path / "m.yaml")["model"]["net"]["class_path"] == cd.NET_CLASS
    assert ScoreModule.load_from_checkpoint(tmp_path / "m.ckpt").sde.N == SCHEDULER["num_train_timesteps"]


def yaml_of(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("failing", [1, 2, 3])  # the checkpoint, its .safetensors, the predict config
def test_a_full_disk_leaves_none_of_the_outputs(tmp_path, capsys, monkeypatch, failing):
    from helpers import disk_full_on_write

    folder = save_flat(unet(*LAYOUTS["skip"]), tmp_path / "m")
    out = tmp_path / "out" / "m.ckpt"
    monkeypatch.setattr(os, "write", disk_full_on_write(failing, starting_with=b""))
    code, err = convert_command(capsys, folder, out, "--safetensors")
    target = [out, out.with_suffix(".safetensors"), out.with_suffix(".yaml")][failing - 1]
    assert code == 1 and err.startswith(f"pds-lightning: error: [Errno 28] No space left on device: '{target}'"), err
    assert os.listdir(out.parent) == []  # no output, no temp file
