"""`trainer.test` of bits/dim on 2 CPU processes (gloo): python likelihood_ddp.py OUT.json. Rank 0 writes the
logged test/bpd and the exact bits/dim of every image (GaussianScoreModule of tests/test_tasks_predict.py)."""

import json
import math
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from test_tasks_predict import GaussianScoreModule
from pds_lightning.likelihood import LikelihoodSettings
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sde import VPSDE

if __name__ == "__main__":
    torch.set_num_threads(1)
    target = GaussianScore(0.5, power_law_spectrum(4, 4, variance=0.05).double(), VPSDE(0.1, 20.0))
    x = target.sample(4, torch.Generator().manual_seed(0)).float().clamp(0, 1)
    settings = LikelihoodSettings(estimator="exact", n_steps=30, dequantize=False)
    module = GaussianScoreModule(target, likelihood=settings)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    result = trainer.test(module, DataLoader(TensorDataset(x), batch_size=1), verbose=False)[0]
    if trainer.global_rank == 0:
        exact = -target.log_prob(x.double(), settings.eps) / (16 * math.log(2)) + 8.0
        with open(sys.argv[1], "w") as fh:
            json.dump({"bpd": result["test/bpd"], "exact": exact.tolist()}, fh)
