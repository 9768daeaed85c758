"""Training images and predict seeds for Lightning: `pds_lightning.data.ImageDataModule` (the class path
configs use), the image sources it reads and the seed-range format."""

from pds_lightning.data.datamodule import ImageDataModule, PreparedImages, TrainImages
from pds_lightning.data.seeds import parse_seed_range, seed_loader
from pds_lightning.data.settings import Augment, Images, Predict, Split, Stats
from pds_lightning.data.sources import (EMBEDDED, ArraySource, FolderSource, TorchvisionSource, embedded_data_dir,
                                        open_source)

__all__ = [
    "EMBEDDED", "ArraySource", "Augment", "FolderSource", "ImageDataModule", "Images", "Predict", "PreparedImages",
    "Split", "Stats", "TorchvisionSource", "TrainImages", "embedded_data_dir", "open_source", "parse_seed_range",
    "seed_loader",
]
