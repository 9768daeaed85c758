"""Score a folder of samples (e.g. a `pds-lightning predict` run) against the data.

    pds-lightning evaluate SAMPLES_DIR --reference REF [--fid-reference STATS.npz] [--fid auto|on|off]
                           [--inception-weights FILE | --feature-extractor digits
                            | --feature-extractor MOD:CLASS --allow-custom-features]
    pds-lightning evaluate --write-reference-stats OUT.npz --reference SOURCE [--image-size N --num-channels C]

REF is a statistics cache file (`*.pt`, written by `ImageStatistics.save`; spectral error only) or a
data source as `ImageDataModule` takes it ("mnist", an image folder, an .npz file, "torchvision:NAME");
reference images are brought to the samples' size and channels. The spectral error is computed whenever
REF is given; FID (and KID) against reference images or, as papers report it, against precomputed
`--fid-reference` statistics (the EDM / ADM `.npz` layout: 'mu', 'sigma'). The features are the configured
extractor, else the standard Inception when its weights are available (`--fid auto`: only when already
cached; `--fid on`, `--fid-reference` and `--write-reference-stats`: downloaded once if need be).
Prints JSON (strict: a non-finite number is an error, not `Infinity`); every FID comes with `fid_num_samples`,
and fewer than 10k samples add a warning. `--feature-extractor` takes a name of FEATURE_EXTRACTORS; the
class path of a user's own nn.Module is imported only with `--allow-custom-features`. `--output` and
`--write-reference-stats` never write over an input (a sample, a reference file) nor, without `--force`, any
existing file. Feature extraction over many images takes long: a progress bar per folder (images done / total,
images/s) goes to stderr, as fit and predict show theirs (tqdm), unless `--quiet`.
"""

from __future__ import annotations

import argparse
import json
import math
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
from pds_lightning.fileio import check_outputs, write_atomic
from pds_lightning.metrics import (FIDStatistics, FeatureMetrics, fid_sample_warning, log_spectral_distance,
                                   make_feature_extractor)
from pds_lightning.statistics import ImageStatistics

REFERENCE_OPTIONS = ("source", "root", "crop_size", "allow_upscale", "convert_channels")

#: The project's feature extractors for `--feature-extractor` (short name: class path); nothing else is imported
#: unless the user opts in with --allow-custom-features.
FEATURE_EXTRACTORS = {"digits": "pds_lightning.features:DigitFeatures"}


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


# Progress bars are redrawn at most once per PROGRESS_INTERVAL seconds, so a log file gets a bounded number of
# updates; the rate is the average since the start (smoothing 0, as Lightning's bars of fit / predict).
PROGRESS_INTERVAL = 1.0


def _batches(dataset, batch_size: int, device: torch.device, progress: str | None = None) -> Iterable[torch.Tensor]:
    """The images of `dataset` in batches on `device`; with `progress` (the folder's label) a progress bar on
    stderr counting images done / total and images/s (stdout carries the JSON result)."""
    from tqdm import tqdm

    with tqdm(total=len(dataset), desc=progress, unit="img", file=sys.stderr, disable=progress is None,
              mininterval=PROGRESS_INTERVAL, smoothing=0, leave=True) as bar:
        for x in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            yield x.to(device)
            bar.update(len(x))


def _label(reference: str | os.PathLike | Mapping[str, Any]) -> str:
    return f"reference {reference['source'] if isinstance(reference, Mapping) else reference}"


def _reference_images(reference: str | Mapping[str, Any], shape: tuple[int, int, int] | None,
                      num_reference: int | None):
    """Reference images at `shape` (None: the first image's channels and shorter side, centre-cropped square)."""
    options = {"source": reference} if isinstance(reference, str) else dict(reference)
    unknown = sorted(set(options) - set(REFERENCE_OPTIONS))
    if unknown or "source" not in options:
        raise ValueError(f"reference data options take {REFERENCE_OPTIONS} (source required), got {sorted(options)}")
    root = Path(options.get("root") or "~/.cache/pds_lightning").expanduser()
    source = open_source(str(options["source"]), root)
    if shape is None:
        first = source[0]
        shape = (int(first.shape[0]), min(int(first.shape[1]), int(first.shape[2])))
    images = PreparedImages(source, image_size=shape[-1], num_channels=shape[0],
                            convert_channels=options.get("convert_channels", True),
                            allow_upscale=options.get("allow_upscale", False), crop_size=options.get("crop_size"))
    if num_reference is not None:
        if num_reference < 1:
            raise ValueError(f"num_reference must be at least 1 (reference images to use), got {num_reference}")
        images = Subset(images, range(min(num_reference, len(images))))
    return images


@torch.no_grad()
def evaluate_folder(samples_dir: str | os.PathLike,
                    reference: ImageStatistics | str | os.PathLike | Mapping[str, Any] | None,
                    feature_extractor: nn.Module | None = None, batch_size: int = 64,
                    num_reference: int | None = None, device: str | torch.device | None = None,
                    fid_reference: FIDStatistics | str | os.PathLike | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Spectral error (and FID / KID with `feature_extractor`) of the images below `samples_dir`.

    `reference`: `ImageStatistics`, a statistics cache file (`.pt`), or data options (a source string or a
    mapping with keys `REFERENCE_OPTIONS`); with data options the reference spectrum is computed from the
    same `num_reference` images (default all) that give the FID reference. `fid_reference`: precomputed
    FID statistics (`FIDStatistics` or an EDM / ADM `.npz`) used instead of reference images for FID (no
    KID); `reference` may then be None (no spectral error). `progress`: a progress bar per folder on stderr.
    """
    device = torch.device(device or "cpu")
    if reference is None and fid_reference is None:
        raise ValueError("evaluate needs --reference (data or statistics) and/or --fid-reference (FID statistics)")
    if fid_reference is not None and feature_extractor is None:
        raise ValueError("FID reference statistics need the feature extractor they were computed with "
                         "(the standard Inception, --inception-weights or --feature-extractor)")
    if fid_reference is not None and not isinstance(fid_reference, FIDStatistics):
        fid_reference = FIDStatistics.load(fid_reference)
    samples = _Uniform(FolderSource(Path(samples_dir)))
    shape = samples.shape
    ref_images = ref_stats = None
    if reference is None:
        pass
    elif isinstance(reference, ImageStatistics):
        ref_stats = reference
    elif isinstance(reference, (str, os.PathLike)) and str(reference).endswith(".pt"):
        ref_stats = ImageStatistics.load(reference)
    else:
        ref_images = _reference_images(str(reference) if isinstance(reference, os.PathLike) else reference,
                                       shape, num_reference)
    if feature_extractor is not None and ref_images is None and fid_reference is None:
        raise ValueError("FID / KID need reference images: pass a data source as the reference, not statistics "
                         "(or FID reference statistics with --fid-reference)")

    features = None
    if feature_extractor is not None:
        features = FeatureMetrics(feature_extractor, shape, kid=fid_reference is None).to(device)
        if fid_reference is not None:
            features.set_reference_statistics(fid_reference)
    sample_stats = ImageStatistics(shape, device=device)
    for x in _batches(samples, batch_size, device, f"samples {samples_dir}" if progress else None):
        sample_stats.update(x)
        if features is not None:
            features.update(x, real=False)
    if ref_images is not None:
        ref_stats = ImageStatistics(shape, device=device)
        for x in _batches(ref_images, batch_size, device, _label(reference) if progress else None):
            ref_stats.update(x)
            if features is not None and fid_reference is None:
                features.update(x, real=True)
    result: dict[str, Any] = {"samples_dir": str(samples_dir), "num_samples": sample_stats.count}
    if ref_stats is not None and ref_stats.count == 0:
        raise ValueError(f"the reference {reference if isinstance(reference, (str, os.PathLike)) else 'statistics'} "
                         "holds no images (count 0), so there is no spectrum to compare with; use statistics "
                         "computed from data (ImageStatistics.update) or a data source")
    if ref_stats is not None:
        if tuple(ref_stats.shape) != shape:
            raise ValueError(f"reference statistics are for images {ref_stats.shape} but the samples are {shape}; "
                             "use statistics of data at the samples' size and channels")
        result["num_reference"] = ref_stats.count
        result["spectral_error"] = log_spectral_distance(sample_stats.power_mean, ref_stats.power_mean.to(device))
    if features is not None:
        result.update(features.compute())
        result["fid_num_samples"] = sample_stats.count
        result["fid_num_reference"] = fid_reference.count if fid_reference is not None else features.num_reference
        result["fid_reference"] = "statistics" if fid_reference is not None else "images"
        warning = fid_sample_warning(sample_stats.count)
        if warning:
            result["warnings"] = [warning]
    return result


@torch.no_grad()
def write_reference_statistics(reference: str | Mapping[str, Any], output: str | os.PathLike,
                               feature_extractor: nn.Module, image_shape: tuple[int, int, int] | None = None,
                               num_reference: int | None = None, batch_size: int = 64,
                               device: str | torch.device | None = None, progress: bool = False) -> FIDStatistics:
    """FID statistics of a data source's images (at `image_shape`, default the data's own), written to
    `output` as an EDM / ADM `.npz` atomically; returns them. `progress`: a progress bar on stderr."""
    device = torch.device(device or "cpu")
    images = _reference_images(reference, image_shape, num_reference)
    shape = tuple(images[0].shape)
    features = FeatureMetrics(feature_extractor, shape, kid=False).to(device)
    for x in _batches(images, batch_size, device, _label(reference) if progress else None):
        features.update(x, real=True)
    stats = features.reference_statistics()
    stats.save(output)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning evaluate", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("samples_dir", nargs="?", help="folder of sample images (e.g. a predict output_dir)")
    parser.add_argument("--reference", default=None,
                        help="statistics cache file (.pt) or data source (mnist, folder, .npz, torchvision:NAME)")
    parser.add_argument("--fid-reference", default=None,
                        help="precomputed FID statistics .npz ('mu', 'sigma': the EDM / ADM reference files)")
    parser.add_argument("--fid", choices=("auto", "on", "off"), default="auto",
                        help="auto: FID when an extractor is configured or the standard Inception is cached")
    parser.add_argument("--write-reference-stats", default=None, metavar="OUT.npz",
                        help="write FID statistics of the --reference data source and exit")
    parser.add_argument("--image-size", type=int, default=None, help="with --write-reference-stats: image size")
    parser.add_argument("--num-channels", type=int, default=None, help="with --write-reference-stats: channels")
    parser.add_argument("--root", default=None, help="root folder of torchvision data sets")
    parser.add_argument("--inception-weights", default=None, help="TorchScript Inception file for FID / KID")
    parser.add_argument("--feature-extractor", default=None,
                        help=f"features for a Frechet distance / KID: one of {sorted(FEATURE_EXTRACTORS)}, or with "
                             "--allow-custom-features the class path 'package.module:Class' of your own nn.Module")
    parser.add_argument("--allow-custom-features", action="store_true",
                        help="let --feature-extractor import a class path outside the project's list")
    parser.add_argument("--num-reference", type=_positive_int, default=None,
                        help="reference images to use (default all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="also write the JSON result to this file")
    parser.add_argument("--force", action="store_true", help="replace existing output files (never an input)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars on stderr (images done / total, images/s per folder)")
    args = parser.parse_args(argv)
    try:
        result = _run(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, KeyError) as err:
        print(f"pds-lightning evaluate: error: {err}", file=sys.stderr)
        return 2
    non_finite = sorted(k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v))
    if non_finite:
        print(f"pds-lightning evaluate: error: {', '.join(f'{k} = {result[k]}' for k in non_finite)}: not a "
              "number JSON can hold; the samples or the reference are degenerate (e.g. constant images)",
              file=sys.stderr)
        return 2
    for warning in result.get("warnings", []):
        print(f"pds-lightning evaluate: warning: {warning}", file=sys.stderr)
    try:
        text = json.dumps(result, indent=2, allow_nan=False)
    except ValueError as err:  # a non-finite number below the top level
        print(f"pds-lightning evaluate: error: the result is not valid JSON ({err})", file=sys.stderr)
        return 2
    print(text)
    if args.output:
        write_atomic(args.output, (text + "\n").encode())
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (reference images to use), got {value}")
    return value


def feature_module(name: str, allow_custom: bool = False) -> nn.Module:
    """The feature extractor `name` names: a key or class path of FEATURE_EXTRACTORS, or (only with `allow_custom`)
    the class path of an nn.Module subclass, built with no arguments. A command-line value is not trusted to name
    a callable: anything else is refused before it is imported, and a non-module class before it is called."""
    path = FEATURE_EXTRACTORS.get(name, name)
    if path not in FEATURE_EXTRACTORS.values() and not allow_custom:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(FEATURE_EXTRACTORS)}, or pass "
                         "--allow-custom-features to import your own nn.Module class 'package.module:Class'")
    return import_class(path, "feature extractor", nn.Module)()


def _run(args) -> dict[str, Any]:
    """The CLI's work: check the option combination and the outputs, choose the feature extractor, evaluate or
    write stats."""
    outputs = [(flag, path) for flag, path in (("--output", args.output),
                                               ("--write-reference-stats", args.write_reference_stats)) if path]
    check_outputs(outputs, [args.samples_dir, args.reference, args.fid_reference, args.inception_weights, args.root],
                  args.force)
    writing = args.write_reference_stats is not None
    if writing and (args.samples_dir or args.fid_reference or not args.reference or args.reference.endswith(".pt")):
        raise ValueError("--write-reference-stats OUT.npz takes only --reference SOURCE (a data source, "
                         "no samples folder, no .pt statistics, no --fid-reference)")
    if not writing and not args.samples_dir:
        raise ValueError("give the samples folder to evaluate (or --write-reference-stats OUT.npz)")
    if args.fid == "off" and (writing or args.fid_reference):
        raise ValueError("--fid off contradicts --fid-reference / --write-reference-stats")
    if (args.image_size is None) != (args.num_channels is None) or (args.image_size and not writing):
        raise ValueError("--image-size and --num-channels go together, with --write-reference-stats")
    has_images = args.reference is not None and not args.reference.endswith(".pt")
    if args.fid == "off":
        standard = "never"
    elif args.fid == "on" or writing or args.fid_reference:
        standard = "required"
    else:
        standard = "if_cached" if has_images else "never"
    module = feature_module(args.feature_extractor, args.allow_custom_features) if args.feature_extractor else None
    extractor = None if args.fid == "off" else make_feature_extractor(module, args.inception_weights, standard)
    reference: Any = args.reference
    if args.root and has_images:
        reference = {"source": args.reference, "root": args.root}
    if writing:
        shape = (args.num_channels, args.image_size, args.image_size) if args.image_size else None
        stats = write_reference_statistics(reference, args.write_reference_stats, extractor, shape,
                                           num_reference=args.num_reference, batch_size=args.batch_size,
                                           device=args.device, progress=not args.quiet)
        result = {"written": str(args.write_reference_stats), "num_images": stats.count, "feature_dim": stats.dim}
        warning = fid_sample_warning(stats.count)
        return dict(result, warnings=[warning]) if warning else result
    return evaluate_folder(args.samples_dir, reference, extractor, batch_size=args.batch_size,
                           num_reference=args.num_reference, device=args.device, fid_reference=args.fid_reference,
                           progress=not args.quiet)


if __name__ == "__main__":
    sys.exit(main())
