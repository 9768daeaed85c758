"""Multi-process generation with a tiny real ScoreModule: 1 vs 2 processes (gloo) and SIGKILL + resume.

Processes are started by tests/scripts/predict_ddp.py (Lightning's own DDP launcher); the 1-process
references run in this process with the same script functions.
"""

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pds_lightning.writer import sample_path, scan_written_seeds
from helpers import clean_env

SCRIPT = Path(__file__).parent / "scripts" / "predict_ddp.py"
spec = importlib.util.spec_from_file_location("predict_ddp", SCRIPT)
predict_ddp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(predict_ddp)


def run_script(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=clean_env())


def png_bytes(out, seeds):
    return {s: sample_path(out, s).read_bytes() for s in seeds}


@pytest.mark.slow
def test_two_processes_write_identical_pngs_and_validate_each_seed_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torchvision.utils import make_grid

    data = tmp_path / "data.npz"
    np.savez(data, images=(np.random.RandomState(0).rand(40, 8, 8, 1) * 255).astype(np.uint8))
    one, two, logs = tmp_path / "one", tmp_path / "two", tmp_path / "logs"
    predict_ddp.predict(str(one), 1, "0-10", 4)
    proc = run_script("both", two, 2, "0-10", 3, logs, 5, data, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert scan_written_seeds(two) == list(range(11))
    assert png_bytes(two, range(11)) == png_bytes(one, range(11))
    manifest = json.loads((two / "manifest.json").read_text())
    assert (manifest["world_size"], manifest["num_written"], manifest["nfe_per_sample"]) == (2, 11, 10)

    # 5 seeds over 2 ranks (3 + 2, one padding row): the logged metric is that of the 5 seeds, once each.
    expected = json.loads((logs / "expected.json").read_text())
    events = EventAccumulator(str(logs / "tb" / "version_0"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    [err] = events.Scalars("val/spectral_error/pds_5")
    assert err.value == pytest.approx(expected["spectral_error"], rel=1e-5)
    assert events.Scalars("val/nfe/pds_5")[0].value == expected["nfe"]
    # FID sums the features of both ranks' samples and of the 4 validation images split over the ranks.
    assert expected["num_reference"] == 4
    assert events.Scalars("val/fid@5/pds_5")[0].value == pytest.approx(expected["fid"], rel=1e-3, abs=1e-6)
    assert len(events.Scalars("val/kid@5/pds_5")) == 1
    [image] = events.Images("samples/pds_5")
    grid = np.asarray(Image.open(BytesIO(image.encoded_image_string)).convert("RGB")).astype(float)
    images = torch.load(logs / "expected_images.pt", weights_only=True)
    want = make_grid(images, nrow=8, padding=2, pad_value=1.0).permute(1, 2, 0).numpy() * 255
    assert grid.shape == (12, 5 * 10 + 2, 3)  # five tiles: none doubled, none missing
    assert np.abs(grid - want).max() <= 1.0


@pytest.mark.slow
def test_pilot_alpha_is_the_same_on_every_rank_and_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    predict_ddp.predict(str(one), 1, "0-5", 2, predict_ddp.PILOT)
    proc = run_script("pilot", two, 2, "0-5", 2, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = [json.loads((d / "manifest.json").read_text())["resolved"]["alpha_auto"] for d in (one, two)]
    assert resolved[0] == resolved[1] and resolved[0]["method"] == "pilot"
    assert png_bytes(two, range(6)) == png_bytes(one, range(6))


@pytest.mark.slow
def test_sigkill_then_resume_gives_every_seed_once_with_uninterrupted_pixels(tmp_path):
    seeds = range(60)
    reference = tmp_path / "reference"
    predict_ddp.predict(str(reference), 1, "0-59", 4)
    out = tmp_path / "killed"
    rng = random.Random(0)
    for _ in range(2):
        before = len(scan_written_seeds(out, remove_stale_tmp=False))
        target = before + rng.randint(1, 15)
        proc = subprocess.Popen([sys.executable, str(SCRIPT), "predict", str(out), "1", "0-59", "2"], cwd=tmp_path, env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while len(scan_written_seeds(out, remove_stale_tmp=False)) < target and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert json.loads((out / "manifest.json").read_text())["complete"] is False  # killed before the end
    done = scan_written_seeds(out, remove_stale_tmp=False)
    assert 0 < len(done) < 60
    predict_ddp.predict(str(out), 1, "0-59", 5)
    assert scan_written_seeds(out) == list(seeds)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for s in seeds:
        with Image.open(sample_path(out, s)) as im:
            im.load()  # decodes: no truncated file
    assert png_bytes(out, seeds) == png_bytes(reference, seeds)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_written"] == 60 - len(done) and manifest["num_skipped_existing"] == len(done)
