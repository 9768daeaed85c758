"""PreconditionerImages: the PDS filters and the data's radial spectrum in TensorBoard, from the module's statistics."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import tiny_module
from pds_lightning.callbacks import PreconditionerImages
from pds_lightning.metrics import radial_power_spectrum
from pds_lightning.preconditioner import filter_from_statistic


def test_filters_and_spectrum_are_logged_at_fit_start(tmp_path):
    module = tiny_module(statistics=True)
    trainer = Trainer(logger=TensorBoardLogger(tmp_path, name="run", version=""), enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")
    PreconditionerImages(alpha=3.0).on_fit_start(trainer, module)
    trainer.logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert {"preconditioner/frequency_filter", "preconditioner/space_filter"} <= set(events.Tags()["images"])
    stats = module.data_statistics
    logged = torch.tensor([e.value for e in events.Scalars("data/radial_log10_power")], dtype=torch.float64)
    torch.testing.assert_close(logged, radial_power_spectrum(stats.power_mean.double()).mean(0).log10(),
                               rtol=1e-5, atol=1e-5)
    space = filter_from_statistic(stats.space_statistic(), 3.0)
    image = events.Images("preconditioner/space_filter")[0]
    assert (image.width, image.height) == (8, 8)
    png = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)), dtype=np.float64)
    pixels = torch.from_numpy(png)[..., 0]  # one channel, stored as gray RGB
    expected = (space - space.min()) / (space.max() - space.min())
    torch.testing.assert_close(pixels / 255.0, expected[0].double(), rtol=0, atol=1 / 255.0)


def test_nothing_is_logged_without_statistics_and_alpha_must_be_positive(tmp_path):
    trainer = Trainer(logger=TensorBoardLogger(tmp_path, name="run", version=""), enable_progress_bar=False,
                      enable_checkpointing=False, accelerator="cpu")
    PreconditionerImages().on_fit_start(trainer, tiny_module())  # no statistics: no images, no error
    trainer.logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert events.Tags()["images"] == []
    with pytest.raises(ValueError, match="alpha must be > 0"):
        PreconditionerImages(alpha=0.0)
