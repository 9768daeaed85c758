"""Predict / validate a tiny real ScoreModule on CPU with 1 or more processes (Lightning DDP, gloo).

    python tests/scripts/predict_ddp.py predict OUT_DIR DEVICES SEEDS BATCH
    python tests/scripts/predict_ddp.py pilot OUT_DIR DEVICES SEEDS BATCH      (alpha chosen by Pilot)
    python tests/scripts/predict_ddp.py validate LOG_DIR DEVICES NUM_SAMPLES DATA_NPZ
    python tests/scripts/predict_ddp.py both OUT_DIR DEVICES SEEDS BATCH LOG_DIR NUM_SAMPLES DATA_NPZ

`predict` writes the samples of SEEDS with SampleWriter. `validate` runs one training step and the
SamplingCallback; rank 0 then writes LOG_DIR/expected.json with the spectral error and NFE of the
seeds sampled in this one process, for the test to compare with what the callback logged.
Run as a subprocess by tests/test_callbacks.py; Lightning's own launcher starts the other processes.
"""

import json
import sys

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import helpers
from pds_lightning.callbacks import SampleWriter, SamplingCallback
from pds_lightning.data import ImageDataModule, Images, Predict, Split, Stats
from pds_lightning.metrics import feature_moments, frechet_distance, spectral_error
from pds_lightning.module import ScoreModule
from pds_lightning.alpha import Pilot
from pds_lightning.sampling import PC, PDS, Sampler
from pds_lightning.statistics import ImageStatistics

SETTINGS = PC(name="pds_5", steps=5, pds=PDS(filters="both"))
# alpha chosen by pilot samples: each rank runs the pilot, rank 0's choice is broadcast.
PILOT = PC(name="pilot_5", steps=5, pds=PDS(filters="both", alpha=Pilot(2)))


class Features(torch.nn.Module):
    """A fixed random conv + pool feature extractor for FID / KID."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(-2, -1))


def tiny_module(sampler: Sampler = SETTINGS) -> ScoreModule:
    torch.manual_seed(0)  # the same weights in every process
    module = helpers.tiny_module(helpers.tiny_net(), lr=1e-3, sampler=sampler)
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    module.set_statistics(ImageStatistics((1, 8, 8)).update(images))  # PDS filters from fixed images
    return module


def trainer(devices: int, **kw) -> L.Trainer:
    strategy = "ddp" if devices > 1 else "auto"
    return L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False, **kw)


def predict(out_dir: str, devices: int, seeds: str, batch: int, sampler: Sampler = SETTINGS) -> None:
    dm = ImageDataModule(predict=Predict(seeds=seeds, batch_size=batch))
    trainer(devices, logger=False, callbacks=[SampleWriter(out_dir)]).predict(
        tiny_module(sampler), datamodule=dm, return_predictions=False)


def validate(log_dir: str, devices: int, num_samples: int, data: str) -> None:
    module = tiny_module()
    dm = ImageDataModule(source=data, images=Images(size=8, num_channels=1), split=Split(val_size=4),
                         stats=Stats(num_images=0, cache_dir=""), batch_size=4)
    logger = TensorBoardLogger(log_dir, name="tb", version=0)
    t = trainer(devices, logger=logger, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=0,
                callbacks=[SamplingCallback([SETTINGS], num_samples=num_samples, fid_feature_extractor=Features())])
    t.fit(module, datamodule=dm)
    if t.is_global_zero:
        result = module.sample(SETTINGS, torch.arange(num_samples))
        reference = torch.cat(list(dm.val_dataloader()))
        with torch.no_grad():
            f = Features()
            fid = frechet_distance(*feature_moments(f(result.x)), *feature_moments(f(reference)))
        expected = {"spectral_error": spectral_error(result.x, module.data_statistics.power_mean),
                    "nfe": result.nfe, "fid": fid, "num_reference": len(reference)}
        torch.save(result.x, f"{log_dir}/expected_images.pt")
        with open(f"{log_dir}/expected.json", "w") as f:
            json.dump(expected, f)


if __name__ == "__main__":
    mode, path, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "predict":
        predict(path, devices, sys.argv[4], int(sys.argv[5]))
    elif mode == "pilot":
        predict(path, devices, sys.argv[4], int(sys.argv[5]), PILOT)
    elif mode == "validate":
        validate(path, devices, int(sys.argv[4]), sys.argv[5])
    elif mode == "both":  # one process start for both checks (starting processes dominates the time)
        predict(path, devices, sys.argv[4], int(sys.argv[5]))
        validate(sys.argv[6], devices, int(sys.argv[7]), sys.argv[8])
    else:
        raise SystemExit(f"unknown mode {mode!r}; use predict, pilot, validate or both")
