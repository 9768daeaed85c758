"""convert-diffusers by Hub repo id: the command a user types, in a process whose HF_HOME is a temporary
Hugging Face cache laid out as huggingface_hub lays it out (blobs/, snapshots/<commit>/ links, refs/main), with
HF_HUB_OFFLINE=1 (nothing here reaches the Hub). huggingface_hub itself resolves the repo and the revision."""

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import DDPMScheduler, UNet2DModel

from helpers import clean_env
from test_convert_diffusers import LAYOUTS, SIZE, save_flat, unet

from pds_lightning import convert_diffusers as cd
from pds_lightning.convert import ConversionError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "tests-org/ncsnpp-tiny"
# Runs `python -m pds_lightning ARGS` once per entry in one process (one import of torch for all runs), the
# environment set before huggingface_hub is imported; writes [[exit status, stderr], ...] as JSON.
DRIVER = """
import contextlib, io, json, runpy, sys
runs = []
for argv in json.loads(sys.argv[1]):
    sys.argv, err = ["pds-lightning", *argv], io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_module("pds_lightning", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as stop:
            code = stop.code
    runs.append([code, err.getvalue()])
open(OUT, "w").write(json.dumps(runs))
"""


def put_in_cache(hf_home: Path, repo_id: str, folder: Path, commit: str) -> Path:
    """`folder`'s files as huggingface_hub caches a download of `repo_id` at `commit` (branch main)."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(file.read_bytes())
        link = repo / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def run_offline(hf_home: Path, cwd: Path, *runs: list[str]) -> list[tuple[int, str]]:
    out = cwd / "runs.json"
    code = DRIVER.replace("OUT", repr(str(out)))
    env = clean_env(HF_HOME=str(hf_home), HF_HUB_OFFLINE=1, HF_HUB_DISABLE_TELEMETRY=1)
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(runs))], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(out.read_text())]


def ddpm_folder(folder: Path) -> Path:
    """A DDPM UNet2DModel with its DDPMScheduler in the flat layout of google/ddpm-cifar10-32."""
    UNet2DModel(sample_size=SIZE, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D")).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=10).save_pretrained(folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline",
                                                         "unet": ["diffusers", "UNet2DModel"],
                                                         "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


def test_a_repo_id_converts_from_the_cache_offline_and_refusals_are_one_line(tmp_path):
    folder = save_flat(unet(*LAYOUTS["skip"]), tmp_path / "local")
    hf_home = tmp_path / "hf"
    put_in_cache(hf_home, REPO, folder, COMMIT)
    put_in_cache(hf_home, "tests-org/ddpm-tiny", ddpm_folder(tmp_path / "ddpm"), "f" * 40)
    cache = hf_home / "hub"
    runs = run_offline(hf_home, tmp_path,
                       ["convert-diffusers", REPO, "main.ckpt"],
                       ["convert-diffusers", REPO, "pinned.ckpt", "--revision", COMMIT],
                       ["convert-diffusers", "tests-org/absent", "x.ckpt"],
                       ["convert-diffusers", REPO, "x.ckpt", "--revision", "v2"],
                       ["convert-diffusers", "tests-org/ddpm-tiny", "x.ckpt"])
    assert [code for code, _ in runs] == [0, 0, 1, 1, 1], runs
    tail = " (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)\n"
    assert runs[2][1] == (f"pds-lightning: error: Hub repo tests-org/absent is not in the Hugging Face cache {cache} "
                          "and HF_HUB_OFFLINE=1 forbids downloading: run once without HF_HUB_OFFLINE=1 to download it "
                          "(or check the repo id)" + tail)
    assert runs[3][1] == (f"pds-lightning: error: revision v2 of Hub repo {REPO} is not in the Hugging Face cache "
                          f"{cache} (cached: main, {COMMIT}) and HF_HUB_OFFLINE=1 forbids downloading: run once "
                          "without HF_HUB_OFFLINE=1 to download it, or pass a cached --revision" + tail)
    assert runs[4][1] == ("pds-lightning: error: tests-org/ddpm-tiny is not an NCSN++ score model: unsupported block "
                          "type(s) DownBlock2D, AttnDownBlock2D and a 'positional' time embedding (e.g. a DDPM "
                          "UNet2DModel); convert-diffusers reads NCSN++ (score_sde) models with Skip / AttnSkip blocks "
                          "and a 'fourier' embedding, e.g. google/ncsnpp-ffhq-256" + tail)
    assert not (tmp_path / "x.ckpt").exists()

    # the same checkpoint as the folder gives, plus where it came from: repo, revision, commit, sha256 per file
    local = torch.load(cd.convert_diffusers(folder, tmp_path / "local.ckpt"), weights_only=True)
    snapshot = cache / "models--tests-org--ncsnpp-tiny" / "snapshots" / COMMIT
    hashes = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
              for name in ("model_index.json", "config.json", "diffusion_pytorch_model.safetensors",
                           "scheduler_config.json")}
    for name, revision in (("main", "main"), ("pinned", COMMIT)):
        ckpt = torch.load(tmp_path / f"{name}.ckpt", weights_only=True)
        assert ckpt["state_dict"].keys() == local["state_dict"].keys()
        assert all(torch.equal(v, local["state_dict"][k]) for k, v in ckpt["state_dict"].items())
        source = {"repo_id": REPO, "revision": revision, "commit": COMMIT, "folder": str(snapshot.resolve()),
                  "files": hashes}
        assert ckpt["source"] == source
        text = (tmp_path / f"{name}.yaml").read_text()
        comment = [line[2:] for line in text.splitlines() if line.startswith("# ")]
        assert comment[0] == "converted by pds-lightning convert-diffusers from:"
        assert yaml.safe_load("\n".join(comment[1:])) == {"source": source}
        assert yaml.safe_load(text)["model"] == yaml.safe_load((tmp_path / "local.yaml").read_text())["model"]


def test_revision_is_for_repo_ids_and_an_existing_folder_is_a_folder(tmp_path, monkeypatch):
    folder = save_flat(unet(*LAYOUTS["skip"]), tmp_path / "org" / "name")
    with pytest.raises(ConversionError, match=rf"^--revision applies to a Hub repo id \(org/name\); {folder} is a "
                                              "local folder$"):
        cd.convert_diffusers(folder, tmp_path / "a.ckpt", revision="main")
    monkeypatch.chdir(tmp_path)
    ckpt = torch.load(cd.convert_diffusers("org/name", tmp_path / "a.ckpt"), weights_only=True)  # org/name exists here
    assert "repo_id" not in ckpt["source"] and ckpt["source"]["folder"] == str(folder.resolve())
    assert ckpt["source"]["files"]["config.json"] == hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
