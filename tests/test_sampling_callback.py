"""`pds_lightning.sampling_callback.SamplingCallback` in a real Lightning fit: grids, spectral error, NFE and
FID/KID logged to TensorBoard, checked against the sampler's own output and the metric formulas."""

from io import BytesIO

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from pds_lightning.callbacks import SamplingCallback
from pds_lightning.data import Augment, ImageDataModule, Images, Split, Stats
from pds_lightning.images import to_uint8
from pds_lightning.metrics import spectral_error
from pds_lightning.sampling import PC, PDS
from helpers import SIZE, CHANNELS, GaussianModule, TinyFeatures, cpu_trainer, frechet_reference, kid_reference


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

    samplers = [PC(name="vanilla"), PC(name="pds_25", speed_up=4.0, pds=PDS(filters="both"))]
    callback = SamplingCallback(samplers, num_samples=10, grid_nrow=4, fid_feature_extractor=TinyFeatures())
    dm = ImageDataModule(source=str(gaussian_npz(tmp_path)), images=Images(size=SIZE, num_channels=CHANNELS),
                         augment=Augment(random_flip=False), split=Split(val_size=10),
                         stats=Stats(num_images=0, cache_dir=""), batch_size=4)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    model = GaussianModule()
    cpu_trainer(tmp_path, logger=logger, callbacks=[callback], max_epochs=1, limit_train_batches=2,
            num_sanity_val_steps=1).fit(model, datamodule=dm)

    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"samples/vanilla", "samples/pds_25", "samples/side_by_side"} <= set(tags["images"])
    seeds = torch.arange(10)
    features = TinyFeatures().eval()
    with torch.no_grad():  # the reference images: the validation split, 10 = num_samples (KID's subsets are whole)
        real = features(torch.cat([x for x in dm.val_dataloader()]))
    for s in samplers:
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
