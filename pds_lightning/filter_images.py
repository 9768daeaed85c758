"""TensorBoard pictures of the PDS preconditioner a run will sample with: the frequency and space filters at
one alpha, and the data's radial power spectrum, logged once when fit starts (rank 0, TensorBoard loggers)."""

from __future__ import annotations

import lightning as L
import torch

from pds_lightning.metrics import radial_power_spectrum
from pds_lightning.preconditioner import filter_from_statistic


class PreconditionerImages(L.Callback):
    """Log `preconditioner/{frequency,space}_filter` at `alpha` and `data/radial_log10_power` from the module's
    data statistics at the start of fit; nothing without statistics or an image-logging logger."""

    def __init__(self, alpha: float = 5.0):
        if not alpha > 0:
            raise ValueError(f"PreconditionerImages alpha must be > 0 (PDS uses ~5), got {alpha}")
        self.alpha = float(alpha)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        stats = getattr(pl_module, "data_statistics", None)
        experiment = getattr(trainer.logger, "experiment", None)
        if stats is None or not hasattr(experiment, "add_image") or trainer.global_rank != 0:
            return
        for name, image in filter_images(stats, self.alpha).items():
            experiment.add_image(f"preconditioner/{name}_filter", image, trainer.global_step, dataformats="CHW")
        radial = radial_power_spectrum(stats.power_mean.double()).mean(0)
        for r, p in enumerate(radial.log10().tolist()):
            experiment.add_scalar("data/radial_log10_power", p, r)


def filter_images(stats, alpha: float) -> dict[str, torch.Tensor]:
    """The two PDS filters as [C, H, W] images in [0, 1]; the frequency one fftshifted (DC in the centre, the
    way spectra are read)."""
    freq = torch.fft.fftshift(filter_from_statistic(stats.freq_statistic(), alpha), dim=(-2, -1))
    space = filter_from_statistic(stats.space_statistic(), alpha)
    return {name: (f - f.min()) / (f.max() - f.min()).clamp_min(1e-12) for name, f in (("frequency", freq),
                                                                                      ("space", space))}
