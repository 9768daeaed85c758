"""`pds_lightning.writer.SampleWriter` in real Lightning predict runs, with the real sampler on an exact
Gaussian score: every seed once with the sampled pixels, resume, disk full, bad output, progress bar, and
a folder refused to a run of other settings or weights."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pds_lightning.callbacks import SampleWriter
from pds_lightning.data import ImageDataModule, Predict
from pds_lightning.images import to_uint8
from pds_lightning.fileio import this_host
from pds_lightning.sampling import PC, PDS
from pds_lightning.writer import SampleWriteError, model_fingerprint, sample_path, scan_written_seeds
from helpers import GaussianModule, cpu_trainer, dead_pid, disk_full_on_write


def predict(tmp_path, out, seeds="0-9", batch=4, model=None, trainer_kw=None, **writer_kw):
    model = model or GaussianModule()
    dm = ImageDataModule(predict=Predict(seeds=seeds, batch_size=batch))
    writer = SampleWriter(out, **writer_kw)
    cpu_trainer(tmp_path, callbacks=[writer], **(trainer_kw or {})).predict(model, datamodule=dm,
                                                                            return_predictions=False)
    return model, writer


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def expected_pixels(seeds, model=None):
    model = model or GaussianModule()
    return to_uint8(model.sample(model.sampler, torch.tensor(seeds)).x)


def test_writer_writes_every_seed_once_with_the_sampled_pixels_and_a_manifest(tmp_path):
    out = tmp_path / "samples"
    model, _ = predict(tmp_path, out, seeds="0-9,1000-1001", batch=4, write_npz=True)
    seeds = list(range(10)) + [1000, 1001]
    assert scan_written_seeds(out) == seeds
    assert sample_path(out, 1001) == out / "001" / "001001.png"
    pixels = expected_pixels(seeds)
    for seed, want in zip(seeds, pixels):
        assert np.array_equal(read_png(sample_path(out, seed)), want)
    shards = sorted((out / "npz").iterdir())
    assert [p.name for p in shards] == ["000000-000003.npz", "000004-000007.npz", "000008-001001.npz"]
    with np.load(shards[2]) as z:
        assert z["seeds"].tolist() == [8, 9, 1000, 1001]
        assert np.array_equal(z["samples"], pixels[8:])
    manifest = json.loads((out / "manifest.json").read_text())
    nfe = model.sample(model.sampler, torch.tensor([0])).nfe
    assert manifest["num_written"] == 12 and manifest["num_on_disk"] == 12
    assert manifest["nfe_per_sample"] == nfe == 2 * 25  # speed_up 4 of 100 scales, corrector + predictor
    settings = manifest["settings"]["init_args"]
    assert settings["pds"]["init_args"]["filters"] == "both" and settings["speed_up"] == 4.0
    assert manifest["samples_per_s"] > 0 and manifest["world_size"] == 1
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_writer_resumes_by_skipping_written_seeds(tmp_path):
    out = tmp_path / "samples"
    predict(tmp_path, out)
    reference = {s: sample_path(out, s).read_bytes() for s in range(10)}
    for s in (3, 4, 9):
        sample_path(out, s).unlink()
    stale = out / "000" / f".000005.png.{dead_pid()}@{this_host()}.0123abcd.tmp"  # a killed writer's
    stale.write_bytes(b"partial")
    live = out / "000" / f".000003.png.{os.getpid()}@{this_host()}.0123abcd.tmp"  # a running writer's
    live.write_bytes(b"in progress")
    kept = {s: sample_path(out, s).stat().st_mtime_ns for s in (0, 5)}
    model, _ = predict(tmp_path, out, batch=2)
    assert model.predicted_seeds == [3, 4, 9]
    assert not stale.exists() and live.read_bytes() == b"in progress"
    assert {s: sample_path(out, s).stat().st_mtime_ns for s in (0, 5)} == kept
    assert {s: sample_path(out, s).read_bytes() for s in range(10)} == reference  # byte-identical, any batch
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_written"], manifest["num_skipped_existing"], manifest["num_on_disk"]) == (3, 7, 10)
    assert manifest["complete"] and [r["num_written"] for r in manifest["earlier_runs"]] == [10]


def test_enospc_midway_leaves_no_partial_file_and_reports_written_seeds(tmp_path, monkeypatch):
    out = tmp_path / "samples"
    monkeypatch.setattr(os, "write", disk_full_on_write(6))
    with pytest.raises(SampleWriteError) as info:
        predict(tmp_path, out, batch=4)
    monkeypatch.undo()
    message = str(info.value)
    assert "seed 5" in message and "No space left" in message and "0-4" in message and "free disk space" in message
    assert info.value.written == [0, 1, 2, 3, 4]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == [f"{s:06d}.png" for s in range(5)] + ["manifest.json"]  # no temp file
    started = json.loads((out / "manifest.json").read_text())  # written before the first PNG, not completed
    assert started["complete"] is False and started["settings"]["init_args"]["speed_up"] == 4.0
    # Resuming completes the set with the pixels of an uninterrupted run.
    model, _ = predict(tmp_path, out, batch=3)
    assert model.predicted_seeds == list(range(5, 10))
    pixels = expected_pixels(list(range(10)))
    for s in range(10):
        assert np.array_equal(read_png(sample_path(out, s)), pixels[s])


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match="not writable.*choose another output directory"):
        predict(tmp_path, blocker / "samples")


class NaNModule(GaussianModule):
    """Samples with one NaN pixel in the first image of each batch."""

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        out = super().predict_step(batch, batch_idx)
        out["images"][0, 0, 0, 0] = float("nan")
        return out


def test_writer_refuses_non_finite_images(tmp_path):
    with pytest.raises(ValueError, match="non-finite sample values for seeds 0-1"):
        predict(tmp_path, tmp_path / "s", seeds="0-1", model=NaNModule())
    assert scan_written_seeds(tmp_path / "s") == []


def test_a_predict_that_fails_before_its_first_file_leaves_no_folder(tmp_path):
    """Refused before writing (non-finite images): the output folder, and the folders above it, are not created."""
    with pytest.raises(ValueError, match="non-finite sample values for seeds 0-1"):
        predict(tmp_path, tmp_path / "runs" / "s", seeds="0-1", model=NaNModule())
    assert not (tmp_path / "runs").exists()


def test_progress_bar_shows_seeds_done_and_rate(tmp_path):
    from lightning.pytorch.callbacks import TQDMProgressBar

    bar = TQDMProgressBar()
    dm = ImageDataModule(predict=Predict(seeds="0-5", batch_size=4))
    cpu_trainer(tmp_path, enable_progress_bar=True, callbacks=[bar, SampleWriter(tmp_path / "s")]).predict(
        GaussianModule(), datamodule=dm, return_predictions=False)
    postfix = bar.predict_progress_bar.postfix
    assert "seeds=6" in postfix and "seeds/s=" in postfix


def test_folder_of_other_settings_or_weights_is_refused_before_writing(tmp_path):
    out = tmp_path / "samples"
    predict(tmp_path, out, seeds="0-3")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fast = GaussianModule(PC(name="pds", speed_up=10.0, pds=PDS(filters="both")))
    with pytest.raises(ValueError, match=r"holds the samples of another run \(settings.init_args.speed_up: 4.0 there -> "
                                         r"10.0 now\).*predict into a new output_dir"):
        predict(tmp_path, out, seeds="0-5", model=fast)
    retrained = GaussianModule()
    with torch.no_grad():
        retrained.w.fill_(0.5)  # same settings, other weights: another checkpoint of one config
    assert model_fingerprint(retrained) != model_fingerprint(GaussianModule())
    with pytest.raises(ValueError, match=r"model.fingerprint: \"sha256:.*there -> \"sha256:.* now"):
        predict(tmp_path, out, seeds="0-5", model=retrained)
    with pytest.raises(ValueError, match="settings.init_args.speed_up: 4.0 there -> 10.0 now"):
        predict(tmp_path, out, seeds="0-3", model=fast)  # nothing left to sample: Lightning skips the loop
    assert fast.predicted_seeds == retrained.predicted_seeds == []  # refused before sampling
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # old manifest kept


def test_samples_without_a_manifest_are_not_resumed(tmp_path):
    out = tmp_path / "samples"
    predict(tmp_path, out, seeds="0-1")
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="holds 2 samples but no manifest.json recording the model"):
        predict(tmp_path, out, seeds="0-3")


@pytest.fixture
def deterministic_restored(monkeypatch):
    """Trainer(deterministic=True) switches torch's deterministic algorithms on for the whole process (and sets
    CUBLAS_WORKSPACE_CONFIG): switch them off again after the test."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    yield
    torch.use_deterministic_algorithms(False)


def test_folder_of_other_numerics_is_refused_before_writing(tmp_path, deterministic_restored):
    """Issue 31 item 7: deterministic algorithms (like precision, compile, device type) change a sample's bytes."""
    out = tmp_path / "samples"
    predict(tmp_path, out, seeds="0-3")
    assert json.loads((out / "manifest.json").read_text())["numerics"] == {
        "precision": "32-true", "compile": False, "device_type": "cpu", "deterministic_algorithms": False}
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    model = GaussianModule()
    with pytest.raises(ValueError, match=r"holds the samples of another run \(numerics.deterministic_algorithms: "
                                         r"false there -> true now\)"):
        predict(tmp_path, out, seeds="0-5", model=model, trainer_kw={"deterministic": True})
    assert model.predicted_seeds == []
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_manifest_without_numerics_is_read_as_the_old_defaults(tmp_path, deterministic_restored):
    """A folder written before the numerics were recorded: the run the old code made (32-true, no compile, no
    deterministic algorithms, any device type) resumes it and records its numerics; another run is refused."""
    out = tmp_path / "samples"
    predict(tmp_path, out, seeds="0-1")
    manifest = json.loads((out / "manifest.json").read_text())
    old = {k: v for k, v in manifest.items() if k != "numerics"}
    (out / "manifest.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"another run \(numerics.deterministic_algorithms: false there -> true now\)"):
        predict(tmp_path, out, seeds="0-3", trainer_kw={"deterministic": True})
    torch.use_deterministic_algorithms(False)
    (out / "manifest.json").write_text(json.dumps({**old, "numerics": {"device_type": "cuda"}}))
    with pytest.raises(ValueError, match=r"another run \(numerics.device_type: \"cuda\" there -> \"cpu\" now\)"):
        predict(tmp_path, out, seeds="0-3")
    (out / "manifest.json").write_text(json.dumps(old))
    predict(tmp_path, out, seeds="0-3")
    resumed = json.loads((out / "manifest.json").read_text())
    assert scan_written_seeds(out) == [0, 1, 2, 3] and resumed["num_written"] == 2
    assert resumed["numerics"] == manifest["numerics"]
