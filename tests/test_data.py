import struct

import numpy as np
import pytest
import torch
from PIL import Image

from pds_lightning.data import ImageDataModule, embedded_data_dir, parse_seed_range
from pds_lightning.statistics import ImageStatistics


def make_dm(source, tmp_path, **kwargs):
    settings = dict(image_size=8, val_size=0, stats_num_images=0, stats_cache_dir=str(tmp_path / "stats"),
                    random_flip=False)
    settings.update(kwargs)
    return ImageDataModule(source=str(source), **settings)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def all_train(dm):
    return torch.cat(list(dm.train_dataloader()))


# -- embedded data ------------------------------------------------------------------------------------------
def test_embedded_files_shapes_and_dtypes():
    mnist = np.load(embedded_data_dir() / "mnist_32.npz")
    assert mnist["images"].shape == (5000, 32, 32, 1) and mnist["images"].dtype == np.uint8
    assert np.bincount(mnist["labels"]).tolist() == [500] * 10
    assert mnist["images"][:, :2].max() == 0 and mnist["images"][:, :, -2:].max() == 0  # 2 px zero padding
    assert mnist["images"].max() == 255
    patches = np.load(embedded_data_dir() / "patches_32.npz")
    assert patches["images"].shape == (2048, 32, 32, 3) and patches["images"].dtype == np.uint8
    assert patches["images"].std() > 30  # real photo content, not blank


@pytest.mark.parametrize("name, channels, n", [("mnist", 1, 5000), ("patches", 3, 2048)])
def test_embedded_sources_through_the_datamodule(tmp_path, name, channels, n):
    dm = ImageDataModule(name, image_size=32, val_size=256, stats_num_images=0, batch_size=4)
    dm.setup("fit")
    assert dm.image_shape == (channels, 32, 32)
    assert len(dm.train_indices) + len(dm.val_indices) == n and len(dm.val_indices) == min(256, n // 10)
    batch = next(iter(dm.val_dataloader()))
    raw = np.load(embedded_data_dir() / f"{name}_32.npz")["images"]
    expected = torch.from_numpy(raw[dm.val_indices[:4].numpy()]).permute(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(batch, expected, rtol=0, atol=0)


# -- folder source ------------------------------------------------------------------------------------------
def test_folder_recursive_formats_and_scaling(tmp_path):
    folder = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    exact = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save_png(folder / "a.png", exact)
    save_png(folder / "deep/er/b.png", np.full((10, 12, 3), 255, np.uint8))  # resized: stays constant
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(folder / "deep/c.bmp")
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(folder / "deep/d.webp", lossless=True)
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(folder / "deep/e.JPG")
    (folder / "notes.txt").write_text("ignored")
    dm = make_dm(folder, tmp_path, batch_size=16)
    dm.setup("fit")
    names = [p.relative_to(folder).as_posix() for p in dm.images.source.files]
    assert names == ["a.png", "deep/c.bmp", "deep/d.webp", "deep/e.JPG", "deep/er/b.png"]
    x = torch.stack([dm.images[i] for i in range(5)])
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(exact).permute(2, 0, 1) / 255.0, rtol=0, atol=0)
    torch.testing.assert_close(x[1:3], torch.full((2, 3, 8, 8), 100 / 255), rtol=0, atol=0)  # bmp, lossless webp
    torch.testing.assert_close(x[3], torch.full((3, 8, 8), 100 / 255), rtol=0, atol=3 / 255)  # jpeg is lossy
    torch.testing.assert_close(x[4], torch.ones(3, 8, 8))  # resized from 12 x 10, constant stays constant

    # Train batches: the same images (shuffled), and in [-1, 1] when centred.
    centered = make_dm(folder, tmp_path, centered=True, batch_size=16)
    centered.setup("fit")
    torch.manual_seed(0)
    plain_batch = all_train(dm)
    torch.manual_seed(0)
    centered_batch = all_train(centered)
    torch.testing.assert_close(centered_batch, plain_batch * 2 - 1)
    assert sorted(plain_batch.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(x.sum((1, 2, 3)).tolist()))


def test_resize_and_centre_crop(tmp_path):
    # 16 x 12 (W x H) image: the shorter side 12 -> 8 makes it ~10.7 x 8, then the central 8 x 8 is kept.
    array = np.zeros((12, 16), np.uint8)
    array[:, 8:] = 255
    save_png(tmp_path / "imgs/a.png", array)
    dm = make_dm(tmp_path / "imgs", tmp_path, num_channels=1)
    dm.setup("fit")
    x = all_train(dm)[0, 0]
    assert x.shape == (8, 8)
    assert torch.all(x[:, :3] == 0) and torch.all(x[:, 5:] == 1)  # the edge stays in the centre


def test_flip_and_dequantisation(tmp_path):
    array = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    save_png(tmp_path / "imgs/a.png", array)
    plain = torch.from_numpy(array).float()[None] / 255.0
    dm = make_dm(tmp_path / "imgs", tmp_path, random_flip=True, dequantize=True, num_channels=1)
    dm.setup("fit")
    torch.manual_seed(0)
    seen_flipped = set()
    for _ in range(12):
        x = all_train(dm)[0]
        k = torch.floor(x * 256)  # (u + 255 x) / 256 with u in [0, 1) lies in [k/256, (k+1)/256)
        flipped = torch.equal(k, (plain * 255).round().flip(-1))
        assert flipped or torch.equal(k, (plain * 255).round())
        seen_flipped.add(flipped)
    assert seen_flipped == {True, False}


# -- npz source ---------------------------------------------------------------------------------------------
def test_npz_uint8_gray_and_float(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb)
    dm = make_dm(tmp_path / "rgb.npz", tmp_path, val_size=2, batch_size=32)
    dm.setup("fit")
    assert len(dm.val_indices) == 2 and len(dm.train_indices) == 18
    assert sorted(torch.cat([dm.val_indices, dm.train_indices]).tolist()) == list(range(20))
    val = torch.cat(list(dm.val_dataloader()))
    torch.testing.assert_close(val, torch.from_numpy(rgb[dm.val_indices.numpy()]).permute(0, 3, 1, 2) / 255.0)
    again = make_dm(tmp_path / "rgb.npz", tmp_path, val_size=2).setup_images()
    assert torch.equal(again.val_indices, dm.val_indices)  # deterministic split

    gray = rng.random((3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "gray.npz", gray)  # unnamed single array, (N, H, W), float in [0, 1]
    dm = make_dm(tmp_path / "gray.npz", tmp_path, num_channels=3, batch_size=8)
    dm.setup("fit")
    x = torch.stack([dm.images[i] for i in range(3)])
    torch.testing.assert_close(x, torch.from_numpy(gray)[:, None].expand(3, 3, 8, 8))


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "chw.npz", images=np.zeros((4, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="channels first"):
        make_dm(tmp_path / "chw.npz", tmp_path).setup("fit")
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 8, 8)), b=np.zeros(4))
    with pytest.raises(ValueError, match="'images'"):
        make_dm(tmp_path / "two.npz", tmp_path).setup("fit")
    np.savez(tmp_path / "range.npz", images=np.full((4, 8, 8), 2.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_dm(tmp_path / "range.npz", tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        make_dm(tmp_path / "missing.npz", tmp_path).setup("fit")


# -- torchvision source -------------------------------------------------------------------------------------
def write_idx(path, array):
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_on_disk(tmp_path):
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    digits = np.random.default_rng(2).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", digits)
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(10))
    dm = ImageDataModule("torchvision:MNIST", root=str(tmp_path / "tv"), image_size=28, val_size=0,
                         stats_num_images=4, random_flip=False, batch_size=10)
    dm.setup("fit")
    assert dm.image_shape == (1, 28, 28)
    x = all_train(dm)
    assert x.shape == (10, 1, 28, 28)
    assert sorted(x.flatten(1).sum(1).tolist()) == pytest.approx(sorted((digits / 255.0).reshape(10, -1).sum(1)), rel=1e-5)
    # The default statistics cache lives under <root>/stats.
    assert dm.statistics.count == 4 and len(list((tmp_path / "tv" / "stats").glob("*.pt"))) == 1


def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download: true") as err:
        ImageDataModule("torchvision:CIFAR10", root=str(tmp_path)).setup("fit")
    assert str(tmp_path) in str(err.value)
    with pytest.raises(ValueError, match="LSUN needs a category"):
        ImageDataModule("torchvision:LSUN", root=str(tmp_path)).setup("fit")
    with pytest.raises(ValueError, match="unknown torchvision dataset"):
        ImageDataModule("torchvision:ImageNet", root=str(tmp_path)).setup("fit")


# -- channels and bad images ----------------------------------------------------------------------------------
def test_channel_conversion_or_rejection(tmp_path):
    folder = tmp_path / "mixed"
    save_png(folder / "a_gray.png", np.full((8, 8), 51, np.uint8))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 100, 0
    save_png(folder / "b_rgb.png", rgb)

    to_rgb = make_dm(folder, tmp_path, num_channels=3, batch_size=2)
    to_rgb.setup("fit")
    x = torch.stack([to_rgb.images[i] for i in range(2)])
    assert x.shape == (2, 3, 8, 8) and torch.all(x[0] == 51 / 255)
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([1.0, 100 / 255, 0.0]), rtol=0, atol=0)

    to_gray = make_dm(folder, tmp_path, num_channels=1, batch_size=2)
    to_gray.setup("fit")
    y = torch.stack([to_gray.images[i] for i in range(2)])
    assert y.shape == (2, 1, 8, 8) and torch.all(y[0] == 51 / 255)
    assert y[1, 0, 0, 0].item() == pytest.approx(0.299 * 1 + 0.587 * 100 / 255, abs=1e-6)

    strict = make_dm(folder, tmp_path, num_channels=1, convert_channels=False, batch_size=2)
    strict.setup("fit")
    with pytest.raises(ValueError, match=r"b_rgb\.png has 3 channel\(s\) but num_channels is 1"):
        all_train(strict)


def test_corrupt_image_is_named(tmp_path):
    save_png(tmp_path / "imgs/a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "imgs/b.png").write_bytes(b"\x89PNG not really")
    dm = make_dm(tmp_path / "imgs", tmp_path, stats_num_images=2)
    with pytest.raises(ValueError, match=r"cannot read image file .*b\.png"):
        dm.setup("fit")


def test_small_images_need_allow_upscale(tmp_path):
    save_png(tmp_path / "imgs/small.png", np.full((6, 6, 3), 128, np.uint8))
    with pytest.raises(ValueError, match=r"small\.png is 6x6 px, smaller than image_size 8.*allow_upscale"):
        all_train(make_dm(tmp_path / "imgs", tmp_path, batch_size=1).setup_images())
    dm = make_dm(tmp_path / "imgs", tmp_path, allow_upscale=True).setup_images()
    x = all_train(dm)
    assert x.shape == (1, 3, 8, 8)
    torch.testing.assert_close(x, torch.full_like(x, 128 / 255))


def test_missing_and_empty_sources(tmp_path):
    (tmp_path / "empty/sub").mkdir(parents=True)
    (tmp_path / "empty/sub/readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no png/jpg"):
        make_dm(tmp_path / "empty", tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match="neither"):
        make_dm(tmp_path / "nowhere", tmp_path).setup("fit")
    with pytest.raises(ValueError, match="num_channels must be 1 or 3"):
        make_dm(tmp_path / "nowhere", tmp_path, num_channels=2)


# -- statistics in the datamodule -----------------------------------------------------------------------------
def test_statistics_estimated_cached_and_in_state_dict(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images)
    dm = make_dm(tmp_path / "d.npz", tmp_path, val_size=4, stats_num_images=10, stats_seed=5,
                 dequantize=True, random_flip=True, centered=True)
    dm.setup("fit")
    picked = dm.stats_indices()
    assert len(picked) == 10 and not set(picked.tolist()) & set(dm.val_indices.tolist())
    # Statistics use un-centred, un-augmented images in [0, 1].
    x = torch.from_numpy(images[picked.numpy()]).permute(0, 3, 1, 2).double() / 255.0
    torch.testing.assert_close(dm.statistics.power_mean, (torch.fft.fft2(x).abs() ** 2).mean(0))
    torch.testing.assert_close(dm.statistics.sq_mean, (x**2).mean(0))

    cache_files = list((tmp_path / "stats").glob("*.pt"))
    assert len(cache_files) == 1 and "8px_3ch_10img_seed5" in cache_files[0].name
    # A second module with the same settings reads the cache (shown by a marked cache file).
    marked = ImageStatistics.from_moments(99, dm.statistics.power_mean, dm.statistics.mean, dm.statistics.sq_mean)
    marked.save(cache_files[0])
    same = make_dm(tmp_path / "d.npz", tmp_path, val_size=4, stats_num_images=10, stats_seed=5)
    same.setup("fit")
    assert same.statistics.count == 99
    other_seed = make_dm(tmp_path / "d.npz", tmp_path, val_size=4, stats_num_images=10, stats_seed=6)
    other_seed.setup("validate")
    assert other_seed.statistics.count == 10 and len(list((tmp_path / "stats").glob("*.pt"))) == 2

    restored = make_dm(tmp_path / "d.npz", tmp_path)
    restored.load_state_dict(dm.state_dict())
    torch.testing.assert_close(restored.statistics.freq_statistic(), dm.statistics.freq_statistic(), rtol=0, atol=0)
    assert restored.statistics.count == 10


# -- predict seeds --------------------------------------------------------------------------------------------
def test_parse_seed_range():
    assert parse_seed_range("0-9,20,30-31") == list(range(10)) + [20, 30, 31]
    assert parse_seed_range(" 5 ") == [5]
    assert parse_seed_range("3-3, 7") == [3, 7]
    for bad, message in [("", "empty"), ("1-", "malformed"), ("-3", "malformed"), ("a", "malformed"),
                         ("1,,2", "malformed"), ("5-2", "reversed"), ("1-3,2", "more than once")]:
        with pytest.raises(ValueError, match=message):
            parse_seed_range(bad)


def test_predict_needs_no_images_and_excludes_seeds(tmp_path):
    dm = make_dm(tmp_path / "no_such_folder", tmp_path, seeds="0-9,20", predict_batch_size=4)
    dm.setup("predict")
    dm.exclude_seeds = {1, 2, 20}
    batches = list(dm.predict_dataloader())
    assert all(b.dtype == torch.long for b in batches)
    assert [b.tolist() for b in batches] == [[0, 3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="reversed"):
        make_dm(tmp_path, tmp_path, seeds="9-1")
