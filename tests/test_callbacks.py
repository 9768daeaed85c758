"""SampleWriter and SamplingCallback in real Lightning runs, with the real sampler on an exact Gaussian score."""

import errno
import json
import os
from io import BytesIO

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import nn

from pds_lightning.callbacks import SampleWriter, SamplingCallback
from pds_lightning.fileio import write_atomic
from pds_lightning.images import encode_png, to_uint8
from pds_lightning.writer import SampleWriteError, sample_path, scan_written_seeds
from pds_lightning.data import ImageDataModule
from pds_lightning.metrics import spectral_error
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling.settings import SamplerSettings, generate
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics
from metric_reference import frechet_reference, kid_reference

SIZE, CHANNELS, MEAN, VARIANCE = 8, 3, 0.5, 0.004


class GaussianModule(L.LightningModule):
    """The ScoreModule sampling API over an exact Gaussian score (no network to train).

    `sample` runs the package's sampler; the data statistics are the target's analytic moments.
    A single scalar parameter gives Lightning's fit loop something to optimise.
    """

    def __init__(self, sampler: SamplerSettings | None = None, num_scales: int = 100):
        super().__init__()
        lam = power_law_spectrum(SIZE, SIZE, variance=VARIANCE, channels=CHANNELS)
        self.sde = VESDE(sigma_min=0.01, sigma_max=5.0, num_scales=num_scales)
        self.target = GaussianScore(MEAN, lam, self.sde)
        self.image_shape = (CHANNELS, SIZE, SIZE)
        self.centered = False
        self.sampler = sampler or SamplerSettings(name="pds", preconditioner="both", speed_up=4.0)
        self.w = nn.Parameter(torch.zeros(1))
        self.predicted_seeds: list[int] = []
        power = SIZE * SIZE * lam.clone()
        power[:, 0, 0] += (SIZE * SIZE * MEAN) ** 2
        self.data_statistics = ImageStatistics.from_moments(
            1000, power, torch.full_like(lam, MEAN), torch.full_like(lam, MEAN ** 2 + VARIANCE))

    def sample(self, settings, seeds):
        result = generate(settings, self.target, self.sde, seeds.to(self.device), self.image_shape,
                          statistics=self.data_statistics)
        result.x = result.x.clamp(0.0, 1.0)
        return result

    def training_step(self, batch, batch_idx):
        return (self.w - batch.mean()).square().sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.w - batch.mean()).square().sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.predicted_seeds += batch.tolist()
        result = self.sample(self.sampler, batch.long())
        return {"seeds": batch.long().cpu(), "images": result.x.float().cpu(), "nfe": result.nfe}


def trainer(tmp_path, **kw):
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_model_summary=False, enable_progress_bar=False, default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kw})


def predict(tmp_path, out, seeds="0-9", batch=4, model=None, **writer_kw):
    model = model or GaussianModule()
    dm = ImageDataModule(seeds=seeds, predict_batch_size=batch)
    writer = SampleWriter(out, **writer_kw)
    trainer(tmp_path, callbacks=[writer]).predict(model, datamodule=dm, return_predictions=False)
    return model, writer


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im)


def expected_pixels(seeds, model=None):
    model = model or GaussianModule()
    return to_uint8(model.sample(model.sampler, torch.tensor(seeds)).x)


# ---- files -----------------------------------------------------------------------------------------------
def test_uint8_rounds_to_nearest_and_png_roundtrips(tmp_path):
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 1.2, -0.1]).reshape(1, 1, 2, 3)
    assert to_uint8(x)[0, ..., 0].tolist() == [[0, 1, 0], [255, 255, 0]]
    img = to_uint8(torch.rand(1, 3, 5, 4, generator=torch.Generator().manual_seed(0)))[0]
    path = tmp_path / "a.png"
    write_atomic(path, encode_png(img))
    assert np.array_equal(read_png(path), img)
    assert os.listdir(tmp_path) == ["a.png"]


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    write_atomic(path, b"old")
    real_write = os.write

    def half_then_enospc(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(OSError) as info:
        write_atomic(path, b"new content")
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


# ---- SampleWriter ------------------------------------------------------------------------------------------
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
    assert manifest["settings"]["preconditioner"] == "both" and manifest["settings"]["speed_up"] == 4.0
    assert manifest["samples_per_s"] > 0 and manifest["world_size"] == 1
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_writer_resumes_by_skipping_written_seeds(tmp_path):
    out = tmp_path / "samples"
    predict(tmp_path, out)
    reference = {s: sample_path(out, s).read_bytes() for s in range(10)}
    for s in (3, 4, 9):
        sample_path(out, s).unlink()
    stale = out / "000" / ".000005.png.abc.tmp"  # what a kill during a write leaves behind
    stale.write_bytes(b"partial")
    kept = {s: sample_path(out, s).stat().st_mtime_ns for s in (0, 5)}
    model, _ = predict(tmp_path, out, batch=2)
    assert model.predicted_seeds == [3, 4, 9]
    assert not stale.exists()
    assert {s: sample_path(out, s).stat().st_mtime_ns for s in (0, 5)} == kept
    assert {s: sample_path(out, s).read_bytes() for s in range(10)} == reference  # byte-identical, any batch
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_written"], manifest["num_skipped_existing"], manifest["num_on_disk"]) == (3, 7, 10)


def test_enospc_midway_leaves_no_partial_file_and_reports_written_seeds(tmp_path, monkeypatch):
    out = tmp_path / "samples"
    real_write = os.write
    png_writes = []

    def disk_full_on_sixth_png(fd, data):
        if bytes(data[:4]) == b"\x89PNG":
            png_writes.append(1)
            if len(png_writes) == 6:
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full_on_sixth_png)
    with pytest.raises(SampleWriteError) as info:
        predict(tmp_path, out, batch=4)
    monkeypatch.undo()
    message = str(info.value)
    assert "seed 5" in message and "No space left" in message and "0-4" in message and "free disk space" in message
    assert info.value.written == [0, 1, 2, 3, 4]
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == [f"{s:06d}.png" for s in range(5)]  # no temp file, no manifest
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


def test_writer_refuses_non_finite_images(tmp_path):
    class NaNModule(GaussianModule):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            out = super().predict_step(batch, batch_idx)
            out["images"][0, 0, 0, 0] = float("nan")
            return out

    with pytest.raises(ValueError, match="non-finite sample values for seeds 0-1"):
        predict(tmp_path, tmp_path / "s", seeds="0-1", model=NaNModule())
    assert scan_written_seeds(tmp_path / "s") == []


# ---- SamplingCallback ---------------------------------------------------------------------------------------
class TinyFeatures(nn.Module):
    """A fixed random conv + pool net (weights from a local generator: the global RNG is left alone)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.utils.skip_init(nn.Conv2d, CHANNELS, 6, 3, padding=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(0.3 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(0.1 * torch.randn(self.conv.bias.shape, generator=g))

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(-2, -1))


def gaussian_npz(tmp_path, n=100):
    """Training images: exact target draws, quantised to uint8 as an image file would be."""
    model = GaussianModule()
    x = model.target.sample(n, generator=torch.Generator().manual_seed(7)).float().clamp(0, 1)
    path = tmp_path / "gauss.npz"
    np.savez(path, images=to_uint8(x))
    return path


def test_sampling_callback_logs_grids_and_metrics_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torchvision.utils import make_grid

    settings = [SamplerSettings(name="vanilla"), SamplerSettings(name="pds_25", preconditioner="both", speed_up=4.0)]
    callback = SamplingCallback(settings, num_samples=10, grid_nrow=4, fid_feature_extractor=TinyFeatures())
    dm = ImageDataModule(source=str(gaussian_npz(tmp_path)), image_size=SIZE, num_channels=CHANNELS,
                         batch_size=4, val_size=10, stats_num_images=0, stats_cache_dir="", random_flip=False)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    model = GaussianModule()
    trainer(tmp_path, logger=logger, callbacks=[callback], max_epochs=1, limit_train_batches=2,
            num_sanity_val_steps=1).fit(model, datamodule=dm)

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"samples/vanilla", "samples/pds_25", "samples/side_by_side"} <= set(tags["images"])
    seeds = torch.arange(10)
    features = TinyFeatures().eval()
    with torch.no_grad():  # the reference images: the validation split, 10 = num_samples (KID's subsets are whole)
        real = features(torch.cat([x for x in dm.val_dataloader()]))
    for s in settings:
        result = model.sample(s, seeds)
        [sp] = events.Scalars(f"val/spectral_error/{s.name}")  # one epoch; the sanity check logs nothing
        assert sp.value == pytest.approx(spectral_error(result.x, model.data_statistics.power_mean), rel=1e-5)
        assert events.Scalars(f"val/nfe/{s.name}")[0].value == result.nfe
        assert events.Scalars(f"val/sample_time_s/{s.name}")[0].value > 0
        with torch.no_grad():
            fake = features(result.x)
        [fid] = events.Scalars(f"val/fid@10/{s.name}")
        [kid] = events.Scalars(f"val/kid@10/{s.name}")
        assert fid.value == pytest.approx(frechet_reference(real, fake), rel=1e-4, abs=1e-9)
        # torchmetrics' kernel sums run in float32: ~1e-7 absolute rounding on a value ~1e-4 here
        assert kid.value == pytest.approx(kid_reference(real, fake), rel=1e-4, abs=1e-6)
        [image] = events.Images(f"samples/{s.name}")
        grid = np.asarray(Image.open(BytesIO(image.encoded_image_string)).convert("RGB")).astype(int)
        want = (make_grid(result.x, nrow=4, padding=2, pad_value=1.0).permute(1, 2, 0).numpy() * 255)
        assert grid.shape == (3 * 10 + 2, 4 * 10 + 2, 3)
        assert np.abs(grid - want).max() <= 1.0
    # Exact score, full steps: the samples carry the data's spectrum; the FID reference came from 10 images.
    assert events.Scalars("val/spectral_error/vanilla")[0].value < 0.15
    assert callback._feature_metrics.num_reference == 10


def test_progress_bar_shows_seeds_done_and_rate(tmp_path):
    from lightning.pytorch.callbacks import TQDMProgressBar

    bar = TQDMProgressBar()
    dm = ImageDataModule(seeds="0-5", predict_batch_size=4)
    trainer(tmp_path, enable_progress_bar=True, callbacks=[bar, SampleWriter(tmp_path / "s")]).predict(
        GaussianModule(), datamodule=dm, return_predictions=False)
    postfix = bar.predict_progress_bar.postfix
    assert "seeds=6" in postfix and "seeds/s=" in postfix
