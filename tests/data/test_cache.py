"""Issue 18: the pre-resized uint8 image cache (`cache_dir`) and the one-walk folder scan."""

import os
import re
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pds_lightning.data import ImageDataModule
from pds_lightning.data.sources import FolderSource, scan_images
from helpers import over_groups


def make_folder(root: Path, n: int = 10) -> Path:
    """JPEGs and PNGs of several sizes, RGB and gray (converted), in nested folders."""
    rng = np.random.default_rng(1)
    for i in range(n):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        h, w = 20 + 3 * i, 24 + 2 * (i % 4)
        if i % 4 == 3:
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(sub / f"{i:03d}.png")
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(sub / f"{i:03d}.jpg", quality=90)
    return root


def datamodule(source, tmp_path, **kwargs):
    settings = dict(images=dict(size=12, num_channels=3), augment=dict(random_flip=True, dequantize=True),
                    split=dict(val_size=0), stats=dict(num_images=0, cache_dir=""), batch_size=4, shuffle_seed=11,
                    num_workers=0)
    dm = ImageDataModule(str(source), **over_groups(settings, kwargs))
    dm.setup("fit")
    return dm


def images(dm) -> torch.Tensor:
    return torch.stack([dm.prepared[i] for i in range(len(dm.prepared))])


def train_epoch(dm) -> torch.Tensor:
    torch.manual_seed(5)  # flips and dequantisation noise
    return torch.cat(list(dm.train_dataloader()))


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("crop_size", [None, 18])
def test_cache_equals_the_uncached_pipeline_exactly(tmp_path, crop_size):
    folder = make_folder(tmp_path / "imgs")
    # num_workers 1 in both: the same worker RNG for augmentation
    plain = datamodule(folder, tmp_path, images=dict(crop_size=crop_size), num_workers=1)
    cached = datamodule(folder, tmp_path, images=dict(crop_size=crop_size, cache_dir=str(tmp_path / "cache")),
                        num_workers=1)
    names = cache_files(tmp_path / "cache")
    assert len(names) == 1 and names[0].startswith("imgs_12px_3ch_") and names[0].endswith(".npy")
    array = np.load(tmp_path / "cache" / names[0])
    assert array.shape == (10,) and array.dtype.names == ("pixels", "crc32")
    assert array["pixels"].dtype == np.uint8 and array["pixels"].shape == (10, 3, 12, 12)
    x = images(plain)
    assert torch.equal(images(cached), x)
    assert torch.equal(torch.from_numpy(array["pixels"]).float() / 255, x)  # the file holds the prepared pixels
    assert array["crc32"].tolist() == [zlib.crc32(image.tobytes()) for image in array["pixels"]]
    assert torch.equal(train_epoch(cached), train_epoch(plain))  # augmentation and order unchanged


def test_cache_is_reused_and_rebuilt_when_a_file_or_an_option_changes(tmp_path):
    folder = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = datamodule(folder, tmp_path, images=dict(cache_dir=str(cache)))
    (name,) = cache_files(cache)
    before = (cache / name).stat()
    again = datamodule(folder, tmp_path, images=dict(cache_dir=str(cache)))
    after = (cache / name).stat()
    assert cache_files(cache) == [name] and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert torch.equal(images(again), images(first))

    # Rewrite one image (same name, new pixels): its size or mtime changes, so the key does.
    changed = folder / "part1" / "004.jpg"
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(changed)
    os.utime(changed, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
    rebuilt = datamodule(folder, tmp_path, images=dict(cache_dir=str(cache)))
    assert len(cache_files(cache)) == 2
    plain = datamodule(folder, tmp_path)
    assert torch.equal(images(rebuilt), images(plain))
    k = [p.name for p in plain.prepared.source.files].index("004.jpg")
    assert not torch.equal(images(rebuilt)[k], images(first)[k])

    # Another option (size) selects another cache file too.
    small = datamodule(folder, tmp_path, images=dict(cache_dir=str(cache), size=8))
    assert len(cache_files(cache)) == 3 and images(small).shape == (10, 3, 8, 8)
    assert torch.equal(images(small), images(datamodule(folder, tmp_path, images=dict(size=8))))


def test_failed_build_leaves_no_cache_file(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=12)
    bad = folder / "part2" / "008.jpg"  # 11th of 12: the build has written two batches of 4 when it fails
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(ValueError, match="008.jpg"):
        datamodule(folder, tmp_path, images=dict(cache_dir=str(tmp_path / "cache")))
    assert cache_files(tmp_path / "cache") == []  # neither a partial .npy nor a temp file


def test_source_finer_than_8_bits_is_refused_by_the_cache(tmp_path):
    floats = np.random.default_rng(0).random((6, 12, 12, 3)).astype(np.float32)
    np.savez(tmp_path / "floats.npz", images=floats)
    with pytest.raises(ValueError, match="not 8-bit .* unset `cache_dir`"):
        datamodule(tmp_path / "floats.npz", tmp_path, images=dict(cache_dir=str(tmp_path / "cache")))
    assert cache_files(tmp_path / "cache") == []


def test_scan_order_and_identity_match_a_recursive_glob(tmp_path):
    root = tmp_path / "tree"
    for rel in ["a-c.png", "a/b.png", "a/Z.JPG", "b.webp", "a/x.png/inner.bmp", "notes.txt", "deep/er/e.jpeg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (root / "d.png").mkdir()  # a folder named like an image is not one
    files = FolderSource(root).files
    expected = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")
                      and p.is_file())
    assert files == expected
    assert [p.relative_to(root).as_posix() for p in files] == [
        "a/Z.JPG", "a/b.png", "a/x.png/inner.bmp", "a-c.png", "b.webp", "deep/er/e.jpeg"]
    assert [(rel, size) for rel, size, _ in scan_images(root)] == [
        (p.relative_to(root).as_posix(), p.stat().st_size) for p in expected]


def test_twenty_thousand_files_are_scanned_without_opening_them(tmp_path):
    root = tmp_path / "big"
    for d in range(20):
        (root / f"{d:02d}").mkdir(parents=True)
        for i in range(1000):
            os.close(os.open(root / f"{d:02d}" / f"{i:05d}.png", os.O_CREAT | os.O_WRONLY))  # empty: not decodable
    start = time.perf_counter()
    source = FolderSource(root)
    seconds = time.perf_counter() - start
    assert len(source) == 20000 and source.files[0] == root / "00" / "00000.png"
    assert source.files[-1] == root / "19" / "00999.png"
    assert seconds < 30, seconds  # ~0.2 s here; opening 20k files for a decode would fail, not just be slow


# ---- corrupt caches are named and rebuilt (issue 23 item 13) -----------------------------------------------------
CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "garbage": lambda data: b"\x93NUMPY not really" + bytes(range(256)) * 4,
    "other_shape": None,  # a valid .npy of another image size
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_an_image_cache_that_does_not_validate_is_named_and_rebuilt(tmp_path, corruption):
    folder = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    datamodule(folder, tmp_path, images=dict(cache_dir=str(cache)))
    (name,) = cache_files(cache)
    path = cache / name
    good = path.read_bytes()
    if corruption == "other_shape":
        np.save(path, np.zeros((10, 3, 8, 8), np.uint8))
    else:
        path.write_bytes(CORRUPTIONS[corruption](good))
    with pytest.warns(UserWarning, match=f"image cache {re.escape(str(path))} .*; rebuilding it"):
        rebuilt = datamodule(folder, tmp_path, images=dict(cache_dir=str(cache)))
    assert path.read_bytes() == good and cache_files(cache) == [name]
    assert torch.equal(images(rebuilt), images(datamodule(folder, tmp_path)))


def stats_run(folder, tmp_path, **kwargs):
    return datamodule(folder, tmp_path, stats=dict(num_images=6, cache_dir=str(tmp_path / "stats")), **kwargs)


STATS_CORRUPTIONS = {  # corruption -> what the warning says of the file
    "other_shape": "holds statistics of images (1, 12, 12), not (3, 12, 12)",
    "other_count": "holds statistics of 5 images, not 6",
    "garbage": "cannot be used (cannot read image statistics from {path} (RuntimeError: PytorchStreamReader failed "
               "reading zip archive: failed finding central directory); use a file written by ImageStatistics.save, "
               "or delete a statistics cache file to estimate it again)",
    # issue 31 item 14: torch's advice to load with weights_only=False must not reach the user
    "random_bytes": "cannot be used (cannot read image statistics from {path}: the tensors-only reader refused it (a "
                    "corrupt file, or pickled objects that could run code: do not load it otherwise); use a file",
    "nan": "cannot be used (image statistics file {path}: ImageStatistics state 'power_mean' holds 432 values "
           "NaN/Inf: not moments of images in [0, 1])",
    # issue 31 item 14: a mean power below 0 is no mean of squares
    "negative_power": "cannot be used (image statistics file {path}: ImageStatistics state 'power_mean' holds 1 value "
                      "not >= 0 (e.g. -2): not moments of images in [0, 1])",
}


@pytest.mark.parametrize("corruption", sorted(STATS_CORRUPTIONS))
def test_a_statistics_cache_that_does_not_validate_is_named_and_recomputed(tmp_path, corruption):
    from pds_lightning.statistics import ImageStatistics

    folder = make_folder(tmp_path / "imgs")
    fresh = stats_run(folder, tmp_path).statistics
    (path,) = (tmp_path / "stats").iterdir()
    good = path.read_bytes()
    if corruption == "garbage":
        path.write_bytes(good[:200])
    elif corruption == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif corruption in ("nan", "negative_power"):
        power = fresh.power_mean * float("nan") if corruption == "nan" else fresh.power_mean.clone()
        if corruption == "negative_power":
            power[0, 0, 1] = -2.0
        torch.save({**fresh.state_dict(), "power_mean": power}, path)
    else:
        shape, count = ((1, 12, 12), 6) if corruption == "other_shape" else ((3, 12, 12), 5)
        other = ImageStatistics(shape).update(torch.rand(count, *shape, generator=torch.Generator().manual_seed(0)))
        other.save(path)
    with pytest.warns(UserWarning) as warned:
        again = stats_run(folder, tmp_path).statistics
    (line,) = [str(w.message) for w in warned if "statistics cache" in str(w.message)]
    problem = STATS_CORRUPTIONS[corruption].format(path=path)
    assert line.startswith(f"statistics cache {path} {problem}") and line.endswith("; recomputing it"), line
    assert "weights_only" not in line
    assert again.count == fresh.count == 6 and again.shape == (3, 12, 12)
    for name in ("power_mean", "mean", "sq_mean"):
        assert torch.equal(getattr(again, name), getattr(fresh, name))
    assert ImageStatistics.load(path).count == 6  # the rewritten cache validates
    assert torch.equal(ImageStatistics.load(path).power_mean, fresh.power_mean)


def test_validate_recomputes_a_statistics_cache_of_another_shape_through_the_cli(tmp_path, monkeypatch):
    """Where the user met it: the module was told the data statistics do not fit `data.images.size`."""
    from pds_lightning.cli import main
    from pds_lightning.statistics import ImageStatistics

    monkeypatch.chdir(tmp_path)
    args = ["validate", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"),
            "--data.stats.cache_dir", str(tmp_path / "stats"), "--trainer.default_root_dir", str(tmp_path)]
    main(args)
    (path,) = (tmp_path / "stats").iterdir()
    fresh = ImageStatistics.load(path)
    ImageStatistics((3, 16, 16)).update(torch.rand(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))).save(path)
    with pytest.warns(UserWarning, match=rf"statistics cache {re.escape(str(path))} holds statistics of images "
                                         r"\(3, 16, 16\), not \(1, 16, 16\); recomputing it"):
        main(args)
    again = ImageStatistics.load(path)
    assert again.shape == (1, 16, 16) and torch.equal(again.power_mean, fresh.power_mean)


def test_changed_bytes_in_the_cache_data_are_named_with_the_image(tmp_path):
    """Issue 31 item 14: random bytes in the data section (the header still validates) are not trained on."""
    folder = make_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    datamodule(folder, tmp_path, images=dict(cache_dir=str(cache)))
    (name,) = cache_files(cache)
    path = cache / name
    data = bytearray(path.read_bytes())
    record = 3 * 12 * 12 + 4  # pixels + CRC32
    offset = len(data) - 10 * record + 7 * record + 100  # inside image 7's pixels
    noise = np.random.default_rng(0).integers(0, 256, 16, dtype=np.uint8).tobytes()
    assert noise != bytes(data[offset:offset + 16])
    data[offset:offset + 16] = noise
    path.write_bytes(bytes(data))
    # The header validates: the file is used as it is.
    dm = datamodule(folder, tmp_path, images=dict(cache_dir=str(cache)))
    assert torch.equal(dm.prepared[6], datamodule(folder, tmp_path).prepared[6])  # other images still read
    message = (f"image cache {path}: image 7 ({dm.prepared.source.describe(7)}) does not match its CRC32 (the file "
               "changed after it was written: a disk or copy error); delete it to rebuild")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        dm.prepared[7]
    with pytest.raises(ValueError, match=re.escape(message)):  # and so does a training epoch
        train_epoch(dm)
