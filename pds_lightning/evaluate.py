"""Score a folder of samples (e.g. a `pds-lightning predict` run) against the data.

    pds-lightning evaluate SAMPLES_DIR --reference REF [--inception-weights FILE | --feature-extractor MOD:CLASS]

REF is a statistics cache file (`*.pt`, written by `ImageStatistics.save`; spectral error only) or a
data source as `ImageDataModule` takes it ("mnist", an image folder, an .npz file, "torchvision:NAME");
reference images are brought to the samples' size and channels. The spectral error is always computed,
FID and KID when a feature extractor is configured (they need reference images). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from pds_lightning.classpath import import_class
from pds_lightning.data.datamodule import PreparedImages
from pds_lightning.data.sources import FolderSource, open_source
from pds_lightning.fileio import write_atomic
from pds_lightning.metrics import FeatureMetrics, log_spectral_distance, make_feature_extractor
from pds_lightning.statistics import ImageStatistics

REFERENCE_OPTIONS = ("source", "root", "crop_size", "allow_upscale", "convert_channels")


class _Uniform:
    """Sample images, refusing any whose shape differs from the first (samples of one run share a shape)."""

    def __init__(self, source: FolderSource):
        self.source = source
        self.shape = tuple(source[0].shape)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.source[i]
        if tuple(x.shape) != self.shape:
            raise ValueError(f"{self.source.describe(i)} is shaped {tuple(x.shape)} but the first sample is "
                             f"{self.shape}; evaluate one run's samples at a time")
        return x


def _batches(dataset, batch_size: int, device: torch.device) -> Iterable[torch.Tensor]:
    for x in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        yield x.to(device)


def _reference_images(reference: str | Mapping[str, Any], shape: tuple[int, int, int], num_reference: int | None):
    options = {"source": reference} if isinstance(reference, str) else dict(reference)
    unknown = sorted(set(options) - set(REFERENCE_OPTIONS))
    if unknown or "source" not in options:
        raise ValueError(f"reference data options take {REFERENCE_OPTIONS} (source required), got {sorted(options)}")
    root = Path(options.get("root") or "~/.cache/pds_lightning").expanduser()
    images = PreparedImages(open_source(str(options["source"]), root), image_size=shape[-1], num_channels=shape[0],
                            convert_channels=options.get("convert_channels", True),
                            allow_upscale=options.get("allow_upscale", False), crop_size=options.get("crop_size"))
    if num_reference is not None:
        images = Subset(images, range(min(num_reference, len(images))))
    return images


@torch.no_grad()
def evaluate_folder(samples_dir: str | os.PathLike, reference: ImageStatistics | str | os.PathLike | Mapping[str, Any],
                    feature_extractor: nn.Module | None = None, batch_size: int = 64,
                    num_reference: int | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """Spectral error (and FID / KID with `feature_extractor`) of the images below `samples_dir`.

    `reference`: `ImageStatistics`, a statistics cache file (`.pt`), or data options (a source string or a
    mapping with keys `REFERENCE_OPTIONS`); with data options the reference spectrum is computed from the
    same `num_reference` images (default all) that give the FID reference.
    """
    device = torch.device(device or "cpu")
    samples = _Uniform(FolderSource(Path(samples_dir)))
    shape = samples.shape
    ref_images = None
    if isinstance(reference, ImageStatistics):
        ref_stats = reference
    elif isinstance(reference, (str, os.PathLike)) and str(reference).endswith(".pt"):
        ref_stats = ImageStatistics.load(reference)
    else:
        ref_images = _reference_images(str(reference) if isinstance(reference, os.PathLike) else reference,
                                       shape, num_reference)
        ref_stats = None
    if feature_extractor is not None and ref_images is None:
        raise ValueError("FID / KID need reference images: pass a data source as the reference, not statistics")

    features = FeatureMetrics(feature_extractor, shape).to(device) if feature_extractor is not None else None
    sample_stats = ImageStatistics(shape, device=device)
    for x in _batches(samples, batch_size, device):
        sample_stats.update(x)
        if features is not None:
            features.update(x, real=False)
    if ref_images is not None:
        ref_stats = ImageStatistics(shape, device=device)
        for x in _batches(ref_images, batch_size, device):
            ref_stats.update(x)
            if features is not None:
                features.update(x, real=True)
    if tuple(ref_stats.shape) != shape:
        raise ValueError(f"reference statistics are for images {ref_stats.shape} but the samples are {shape}; "
                         "use statistics of data at the samples' size and channels")
    result: dict[str, Any] = {
        "samples_dir": str(samples_dir),
        "num_samples": sample_stats.count,
        "num_reference": ref_stats.count,
        "spectral_error": log_spectral_distance(sample_stats.power_mean, ref_stats.power_mean.to(device)),
    }
    if features is not None:
        result.update(features.compute())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("samples_dir", help="folder of sample images (e.g. a predict output_dir)")
    parser.add_argument("--reference", required=True,
                        help="statistics cache file (.pt) or data source (mnist, folder, .npz, torchvision:NAME)")
    parser.add_argument("--root", default=None, help="root folder of torchvision data sets")
    parser.add_argument("--inception-weights", default=None, help="TorchScript Inception file for FID / KID")
    parser.add_argument("--feature-extractor", default=None, help="feature module 'package.module:Class' for FID / KID")
    parser.add_argument("--num-reference", type=int, default=None, help="reference images to use (default all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    try:
        module = import_class(args.feature_extractor, "feature extractor")() if args.feature_extractor else None
        extractor = make_feature_extractor(module, args.inception_weights)
        reference: Any = args.reference
        if args.root and not args.reference.endswith(".pt"):
            reference = {"source": args.reference, "root": args.root}
        result = evaluate_folder(args.samples_dir, reference, extractor, batch_size=args.batch_size,
                                 num_reference=args.num_reference, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"pds-lightning evaluate: error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        write_atomic(args.output, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
