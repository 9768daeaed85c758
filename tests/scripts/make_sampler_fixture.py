"""Regenerate tests/fixtures/sampler_bytes.pt and tests/fixtures/tiny_flat_sampler.ckpt (issue 24, item 5).

Run ONCE on the code before the sampler-component change (commit 70c7b4a), from the repository root:
    PYTHONPATH=$PWD python tests/scripts/make_sampler_fixture.py
It trains tests/configs/tiny.yaml for its 3 steps with `pds-lightning fit` (a checkpoint whose hyper-parameters
hold today's flat sampler dict), then samples that model with every shipped config's sampler settings
(configs/*.yaml model.sampler and SamplingCallback settings, configs/score_sde/*.yaml model.sampler; the guided
settings of demo_conditional.yaml on a class-conditional twin of the tiny model, seeded random weights, saved as
tiny_flat_sampler_conditional.ckpt, classes = seeds) and a few
extra settings covering every method, predictor and corrector, for seeds 0-2. Settings are the shipped ones
verbatim; speed_up is relative to the SDE, so on the tiny SDE (num_scales 100) speed_up 10/12/30 give 10/8/3
steps, and n_steps 100/40 are the tiny SDE's full and a partial grid. Stored per setting: the flat settings,
the float32 images of `generate_images` (x in [0, 1]), their uint8 quantisation (the PNG pixels predict
writes) and the NFE. One CPU thread, as the tests (the float sums of a convolution depend on the thread count).
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SEEDS = [0, 1, 2]

# Settings beyond the shipped configs, so every method / predictor / corrector path is pinned.
EXTRA = {
    "x_ode": dict(method="ode", preconditioner="none", n_steps=10),
    "x_edm_heun": dict(method="edm_heun", preconditioner="none", n_steps=6),
    "x_edm_stochastic": dict(method="edm_stochastic", preconditioner="none", n_steps=6, S_churn=40.0, S_tmin=0.05,
                             S_tmax=50.0, S_noise=1.003),
    "x_dpmpp_2m_sde_schedule": dict(method="dpmpp_2m", preconditioner="none", n_steps=8, schedule="sde"),
    "x_euler_langevin_pds": dict(method="euler", preconditioner="both", alpha=3.0, n_steps=6, ode_corrector="langevin",
                                 snr=0.1, n_corrector_steps=2, sigma_min=0.02, sigma_max=10.0, rho=5.0),
    "x_edm_heun_langevin_batch": dict(method="edm_heun", preconditioner="freq", n_steps=5, ode_corrector="langevin",
                                      step_size="batch"),
    "x_ancestral_ald": dict(predictor="ancestral_sampling", corrector="ald", preconditioner="space", alpha=4.0,
                            n_steps=12, snr=0.2, n_corrector_steps=2),
    "x_consistent_em": dict(predictor="euler_maruyama", corrector="langevin", pds_predictor="consistent",
                            preconditioner="both", n_steps=15, denoise=False, eps=1e-3, step_size="batch"),
    "x_none_langevin": dict(predictor="none", corrector="langevin", preconditioner="freq", n_steps=7,
                            check_finite_every=2),
    "x_auto_surrogate": dict(preconditioner="both", alpha="auto", n_steps=10),
}


def shipped_settings() -> dict[str, dict]:
    """{'<config file>:<where>': flat sampler dict} of every shipped config."""
    out = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "score_sde").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        rel = path.relative_to(ROOT).as_posix()
        if (config.get("model") or {}).get("sampler") is not None:
            out[f"{rel}:model.sampler"] = dict(config["model"]["sampler"])
        for callback in (config.get("trainer") or {}).get("callbacks") or []:
            if callback.get("class_path", "").endswith("SamplingCallback"):
                for i, s in enumerate(callback["init_args"]["settings"]):
                    out[f"{rel}:SamplingCallback.settings[{i}]"] = dict(s)
    return out


def conditional_model(model):
    """The tiny model with num_classes 10 (seeded random weights, statistics copied), saved as a second
    flat-sampler checkpoint {'state_dict', 'hyper_parameters'}: the guided settings of demo_conditional.yaml."""
    from pds_lightning.module import ScoreModule

    hparams = dict(model.hparams)
    hparams["net"] = dict(hparams["net"], init_args=dict(hparams["net"]["init_args"], num_classes=10))
    torch.manual_seed(0)
    conditional = ScoreModule.from_hyper_parameters(**hparams)
    conditional.set_statistics(model.data_statistics)
    torch.save({"state_dict": conditional.state_dict(), "hyper_parameters": dict(conditional.hparams)},
               FIXTURES / "tiny_flat_sampler_conditional.ckpt")
    return ScoreModule.load_from_checkpoint(FIXTURES / "tiny_flat_sampler_conditional.ckpt")


def main() -> None:
    torch.set_num_threads(1)  # as the tests run (tests/conftest.py): float sums depend on the thread count
    from pds_lightning.images import to_uint8
    from pds_lightning.module import ScoreModule
    from pds_lightning.sampling.settings import SamplerSettings

    if not (FIXTURES / "tiny_flat_sampler.ckpt").exists():  # delete it to retrain
      with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pds_lightning", "fit", "--config", "tests/configs/tiny.yaml",
                        "--trainer.default_root_dir", tmp, "--trainer.logger.init_args.save_dir", tmp],
                       cwd=ROOT, check=True)
        ckpts = sorted(Path(tmp).rglob("*.ckpt"))
        last = [c for c in ckpts if c.name == "last.ckpt"] or ckpts
        shutil.copyfile(last[0], FIXTURES / "tiny_flat_sampler.ckpt")
    model = ScoreModule.load_from_checkpoint(FIXTURES / "tiny_flat_sampler.ckpt")
    conditional = conditional_model(model)
    table, done = {}, {}
    for key, flat in {**shipped_settings(), **{k: dict(v, name=k) for k, v in EXTRA.items()}}.items():
        same = repr(sorted((k, v) for k, v in flat.items() if k != "name"))
        if same in done:  # identical settings under another name (the name does not change the samples)
            table[key] = dict(table[done[same]], settings=flat)
            continue
        done[same] = key
        settings = SamplerSettings(**flat)
        guided = settings.guidance_scale != 0
        with torch.no_grad():
            if guided:  # classifier-free guidance needs the class-conditional tiny model; classes = seeds
                result = conditional.sample(settings, torch.tensor(SEEDS), torch.tensor(SEEDS))
            else:
                result = model.sample(settings, torch.tensor(SEEDS))
        images = result.x.float().cpu()
        table[key] = {"settings": flat, "classes": SEEDS if guided else None, "images": images, "uint8": torch.from_numpy(to_uint8(images)),
                      "nfe": int(result.nfe)}
        print(f"{key}: nfe {result.nfe}", flush=True)
    torch.save({"seeds": SEEDS, "checkpoint": "tiny_flat_sampler.ckpt",
                "conditional_checkpoint": "tiny_flat_sampler_conditional.ckpt", "samples": table},
               FIXTURES / "sampler_bytes.pt")


if __name__ == "__main__":
    main()
