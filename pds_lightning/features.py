"""A small digit classifier whose penultimate layer is an offline feature space for Frechet distances.

Trained on the embedded MNIST digits by `benchmarks/digit_classifier.py`; the weights ship in
`benchmarks/assets/digit_classifier.pt` (a plain state dict plus metadata, read with weights_only=True), and
inside the wheel (found by `pds_lightning.resources`).
A Frechet distance in these features is called **FD-digits**, never FID (FID means Inception features).

RGB images are reduced to gray by ITU-R BT.601 luminance before the network, so the same features also
score natural RGB patches (as a documented stand-in: the net never saw natural images).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from pds_lightning.images import rgb_to_gray
from pds_lightning.resources import resource_path

DEFAULT_WEIGHTS = resource_path("assets", "digit_classifier.pt")
IMAGE_SIZE = 32


def luminance(x: Tensor) -> Tensor:
    """Gray images `[B, 1, H, W]` from `[B, 1 or 3, H, W]` (BT.601 weights for RGB; gray passes through)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, 1 or 3, H, W], got shape {list(x.shape)}")
    if x.shape[1] == 1:
        return x
    return rgb_to_gray(x)


class DigitClassifier(nn.Module):
    """Three conv blocks (16, 32, 64 channels, each halving 32 px) -> `feature_dim` features -> 10 logits.

    Input: images in [0, 1], `[B, 1 or 3, 32, 32]`. `features(x)` is the post-ReLU penultimate layer.
    """

    def __init__(self, feature_dim: int = 32):
        super().__init__()
        self.feature_dim = feature_dim

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

        self.body = nn.Sequential(block(1, 16), block(16, 32), block(32, 64), nn.Flatten(),
                                  nn.Linear(64 * 4 * 4, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"the digit classifier takes {IMAGE_SIZE}x{IMAGE_SIZE} images, got "
                             f"{tuple(x.shape[-2:])}; resize the images first")
        # Centring the input (MNIST mean ~0.13) speeds training; a fixed shift, part of the network.
        return self.body(luminance(x) - 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_digit_classifier(path: str | os.PathLike | None = None) -> DigitClassifier:
    """The trained classifier from `path` (default: the shipped weights), frozen, in eval mode."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"digit classifier weights {path} not found; train them with "
                                "`python -m benchmarks.digit_classifier` (about a minute on one CPU core)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(f"{path} is not a digit classifier file (expected a dict with 'state_dict'); "
                         "regenerate it with `python -m benchmarks.digit_classifier`")
    net = DigitClassifier(feature_dim=int(blob.get("feature_dim", 32)))
    net.load_state_dict(blob["state_dict"])
    return net.eval().requires_grad_(False)


class DigitFeatures(nn.Module):
    """Feature extractor for `metrics.FeatureMetrics` / `pds-lightning evaluate --feature-extractor
    pds_lightning.features:DigitFeatures`: images in [0, 1] -> classifier features `[B, feature_dim]`.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        self.classifier = load_digit_classifier(path)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.float())


__all__ = ["DEFAULT_WEIGHTS", "DigitClassifier", "DigitFeatures", "load_digit_classifier", "luminance"]
