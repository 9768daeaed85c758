"""`pds-lightning export CKPT OUT_DIR --format diffusers`: diffusers loads the folder and computes our network's
forward with the EMA weights, convert-diffusers reads it back bit for bit, what diffusers cannot represent is
refused in one line, and the folder appears whole or not at all."""

import math
import re
from pathlib import Path

import pytest
import torch
from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

from pds_lightning.checkpoints import lightning_checkpoint, save_checkpoint
from pds_lightning.cli import main
from pds_lightning.convert import convert_score_sde
from pds_lightning.fileio import atomic_folder
from pds_lightning.models import DDPMpp, NCSNpp
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC, Langevin
from pds_lightning.sde import VESDE, VPSDE

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SIZE = 16
SDE = dict(sigma_min=0.01, sigma_max=50.0, num_scales=10)
# score_sde's NCSN++ (VE) as diffusers' UNet2DModel computes it: Skip blocks, FIR, BigGAN, Fourier embedding
NCSNPP = dict(num_res_blocks=1, dropout=0.0, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
              resblock_type="biggan", progressive="output_skip", progressive_input="input_skip",
              progressive_combine="sum", embedding_type="fourier", scale_by_sigma=True, image_size=SIZE,
              num_channels=3, centered=False, **SDE)
LAYOUTS = {"skip": dict(nf=32, ch_mult=[1, 2], attn_resolutions=[]),
           # attention from 128 channels up: diffusers' AttnSkip blocks normalise in 32 groups
           "attention": dict(nf=32, ch_mult=[1, 4], attn_resolutions=[8])}
SAMPLER = PC(corrector=Langevin(snr=0.17, steps_per_level=2), eps=1e-3)
SIGMAS = torch.tensor([0.01, 0.3, 2.0, 50.0])
INDEX = ["model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
         "unet/diffusion_pytorch_model.safetensors"]


def saved_module(path: Path, net_class=NCSNpp, net_args=None, sde_class=VESDE, sde_args=SDE, **module_args) -> Path:
    """A ScoreModule checkpoint (the layout fit and the converters write) whose raw and EMA weights differ."""
    torch.manual_seed(0)
    net_args = dict(net_args if net_args is not None else {**NCSNPP, **LAYOUTS["skip"]})
    module = ScoreModule(net_class(**net_args), sde_class(**sde_args), image_size=net_args.get("image_size", SIZE),
                         num_channels=net_args.get("num_channels", 3), sampler=SAMPLER, **module_args)
    module.set_class_specs({"class_path": f"pds_lightning.models.{net_class.__name__}", "init_args": net_args},
                           {"class_path": f"pds_lightning.sde.{sde_class.__name__}", "init_args": dict(sde_args)})
    with torch.no_grad():
        for p, q in zip(module.net.parameters(), module.ema_net.parameters()):
            p.add_(0.05 * torch.randn_like(p))
            q.add_(0.05 * torch.randn_like(q))  # no layer trivial, EMA != raw
    return save_checkpoint(lightning_checkpoint(module.state_dict(), dict(module.hparams)), path)


def cli(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    return done.value.code


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def files_below(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def exported(request, tmp_path_factory):
    """(layout, checkpoint, its module, exported folder) per layout, through the command."""
    tmp = tmp_path_factory.mktemp(request.param)
    ckpt = saved_module(tmp / "model.ckpt", net_args={**NCSNPP, **LAYOUTS[request.param]})
    assert cli("export", str(ckpt), str(tmp / "out"), "--format", "diffusers") == 0
    return request.param, ckpt, ScoreModule.load_from_checkpoint(ckpt), tmp / "out"


def test_diffusers_loads_the_folder_and_computes_our_ema_forward(exported):
    name, _, module, out = exported
    assert files_below(out) == INDEX
    model = UNet2DModel.from_pretrained(out / "unet").eval()
    x = torch.rand(len(SIGMAS), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    t = torch.log(SIGMAS / 0.01) / math.log(50.0 / 0.01)  # VE: sigma(t) = sigma_min (sigma_max / sigma_min)^t
    with torch.no_grad():
        theirs = model(x, SIGMAS).sample
        assert relative_error(theirs, module.ema_net(x, SIGMAS)) <= 1e-5, name
        assert relative_error(theirs, module.score_fn(ema=True)(x, t)) <= 1e-5, name
        assert relative_error(theirs, module.net(x, SIGMAS)) > 1e-3  # the EMA weights, not the raw ones
    scheduler = ScoreSdeVeScheduler.from_pretrained(out / "scheduler")
    assert {k: scheduler.config[k] for k in ("num_train_timesteps", "sigma_min", "sigma_max", "snr", "correct_steps",
                                             "sampling_eps")} == dict(num_train_timesteps=10, sigma_min=0.01,
                                                                      sigma_max=50.0, snr=0.17, correct_steps=2,
                                                                      sampling_eps=1e-3)
    pipe = ScoreSdeVePipeline.from_pretrained(out)
    assert isinstance(pipe.unet, UNet2DModel) and isinstance(pipe.scheduler, ScoreSdeVeScheduler)


def test_convert_diffusers_reads_the_export_back_bit_for_bit(exported, tmp_path):
    name, ckpt, module, out = exported
    assert cli("convert-diffusers", str(out), str(tmp_path / "back.ckpt")) == 0
    back = torch.load(tmp_path / "back.ckpt", weights_only=True)
    ema = module.ema_net.state_dict()
    for prefix in ("net.", "ema_net."):
        state = {k.removeprefix(prefix): v for k, v in back["state_dict"].items() if k.startswith(prefix)}
        assert state.keys() == ema.keys()
        for k, v in state.items():
            assert v.dtype == ema[k].dtype and torch.equal(v, ema[k]), (name, prefix, k)
    hparams = back["hyper_parameters"]
    wanted = {**NCSNPP, **LAYOUTS[name]}
    assert {k: hparams["net"]["init_args"][k] for k in wanted} == wanted
    assert hparams["sde"]["init_args"] == SDE
    sampler = ScoreModule.load_from_checkpoint(tmp_path / "back.ckpt").sampler
    assert (sampler.corrector.snr, sampler.corrector.steps_per_level, sampler.eps) == (0.17, 2, 1e-3)


REFUSED = {
    "vp": (dict(net_class=DDPMpp, net_args=dict(nf=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                                                 image_size=SIZE, num_channels=3),
                sde_class=VPSDE, sde_args=dict(beta_min=0.1, beta_max=20.0, num_scales=30), centered=True),
           r"the model's SDE is a VPSDE: diffusers' ScoreSdeVeScheduler is the VE SDE only, so VP / sub-VP models "
           r"cannot be exported to diffusers"),
    "ddpmpp": (dict(net_class=DDPMpp, net_args=dict(nf=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[],
                                                     image_size=SIZE, num_channels=3, **SDE)),
               r"cannot export to diffusers: model.net fir=False, progressive='none', progressive_input='none', "
               r"embedding_type='positional', scale_by_sigma=False differs from what diffusers' NCSN\+\+ layout "
               r"\(UNet2DModel with Skip blocks\) computes: fir=True, progressive='output_skip', "
               r"progressive_input='input_skip', embedding_type='fourier', scale_by_sigma=True \("),
    "attention_below_128": (dict(net_args={**NCSNPP, "nf": 16, "ch_mult": [1, 2], "attn_resolutions": [8]}),
                            r"cannot export to diffusers: down_blocks\.1\.attentions\.0\.group_norm normalises 32 "
                            r"channels in 32 groups in diffusers, score_sde's NCSN\+\+ in min\(C // 4, 32\) = 8"),
    "centered_data": (dict(net_args={**NCSNPP, **LAYOUTS["skip"], "centered": True}, centered=True),
                      r"model centered=True, continuous=True: diffusers' ScoreSdeVePipeline samples data in \[0, 1\]"),
    "conditional": (dict(net_args={**NCSNPP, **LAYOUTS["skip"], "num_classes": 2}),
                    r"model.net num_classes=2: UNet2DModel's class embedding is not NCSN\+\+'s"),
    "gray": (dict(net_args={**NCSNPP, **LAYOUTS["skip"], "num_channels": 1}),
             r"cannot export to diffusers: config.json in_channels=1 cannot be converted: diffusers' Skip blocks fix "
             r"3 image channels"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_diffusers_cannot_represent_is_refused_in_one_line(case, tmp_path, capsys):
    kwargs, message = REFUSED[case]
    ckpt = saved_module(tmp_path / "m.ckpt", **kwargs)
    capsys.readouterr()
    assert cli("export", str(ckpt), str(tmp_path / "out"), "--format", "diffusers") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("pds-lightning: error: ")
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]  # nothing written, no temp left


def test_a_converted_score_sde_model_without_the_skip_paths_is_refused(tmp_path, capsys):
    """score_sde's own tiny NCSN++ (progressive none / residual input) converted here has no diffusers form."""
    ckpt = convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", FIXTURES / "ncsnpp_ve_tiny.yaml",
                             tmp_path / "tiny.ckpt")
    capsys.readouterr()
    assert cli("export", str(ckpt), str(tmp_path / "out"), "--format", "diffusers") == 1
    assert capsys.readouterr().err == (
        "pds-lightning: error: cannot export to diffusers: model.net progressive='none', progressive_input='residual' "
        "differs from what diffusers' NCSN++ layout (UNet2DModel with Skip blocks) computes: "
        "progressive='output_skip', progressive_input='input_skip' (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)\n")


def test_out_dir_is_new_or_replaced_with_force_and_never_holds_the_input(tmp_path, capsys):
    ckpt = saved_module(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert cli("export", str(ckpt), str(out), "--format", "diffusers") == 1
    assert capsys.readouterr().err.startswith(f"pds-lightning: error: {out} exists; choose a new folder or pass "
                                              "--force to replace it")
    assert files_below(out) == ["keep.txt"]
    assert cli("export", str(ckpt), str(out), "--format", "diffusers", "--force") == 0
    assert files_below(out) == INDEX
    inner = out / "m.ckpt"
    inner.write_bytes(ckpt.read_bytes())
    capsys.readouterr()
    assert cli("export", str(inner), str(out), "--format", "diffusers", "--force") == 1
    assert capsys.readouterr().err.startswith(f"pds-lightning: error: {out} is or holds the input {inner.resolve()}; "
                                              "write to another folder")
    assert inner.read_bytes() == ckpt.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "out"]  # no temp folder left


def test_atomic_folder_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_folder(target) as tmp:
            (tmp / "a.json").write_text("{}")
            raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_folder(target, replace=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("midway")
    assert files_below(target) == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_pc_sampler_without_corrector_round_trips_as_zero_correct_steps():
    """ScoreSdeVePipeline runs `correct_steps` Langevin steps per level; 0 is a PC sampler without corrector."""
    from pds_lightning import convert_diffusers as cd

    sde = VESDE(**SDE)
    scheduler = cd.scheduler_of(sde, PC(corrector=None, eps=1e-3))
    assert scheduler == {"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 10, "snr": 0.15,
                         "sigma_min": 0.01, "sigma_max": 50.0, "sampling_eps": 1e-3, "correct_steps": 0}
    back_sde, sampler = cd.ve_sde(scheduler)
    assert sampler.corrector is None and sampler.eps == 1e-3 and (back_sde.N, back_sde.sigma_max) == (10, 50.0)
