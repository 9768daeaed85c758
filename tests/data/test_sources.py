"""`pds_lightning.data.sources` through the data module: embedded sets, folders, npz, torchvision files on disk,
and the errors for corrupt, missing and empty sources."""

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pds_lightning.data import Augment, ImageDataModule, Images, Split, Stats, embedded_data_dir
from helpers import all_train, make_datamodule as make_dm, save_png

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


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
    dm = ImageDataModule(name, images=Images(size=32), split=Split(val_size=256), stats=Stats(num_images=0),
                         batch_size=4)
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
    names = [p.relative_to(folder).as_posix() for p in dm.prepared.source.files]
    assert names == ["a.png", "deep/c.bmp", "deep/d.webp", "deep/e.JPG", "deep/er/b.png"]
    x = torch.stack([dm.prepared[i] for i in range(5)])
    assert x.shape == (5, 3, 8, 8) and x.dtype == torch.float32
    torch.testing.assert_close(x[0], torch.from_numpy(exact).permute(2, 0, 1) / 255.0, rtol=0, atol=0)
    torch.testing.assert_close(x[1:3], torch.full((2, 3, 8, 8), 100 / 255), rtol=0, atol=0)  # bmp, lossless webp
    torch.testing.assert_close(x[3], torch.full((3, 8, 8), 100 / 255), rtol=0, atol=3 / 255)  # jpeg is lossy
    torch.testing.assert_close(x[4], torch.ones(3, 8, 8))  # resized from 12 x 10, constant stays constant

    # Train batches: the same images (shuffled), and in [-1, 1] when centred.
    centered = make_dm(folder, tmp_path, images=dict(centered=True), batch_size=16)
    centered.setup("fit")
    torch.manual_seed(0)
    plain_batch = all_train(dm)
    torch.manual_seed(0)
    centered_batch = all_train(centered)
    torch.testing.assert_close(centered_batch, plain_batch * 2 - 1)
    assert sorted(plain_batch.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(x.sum((1, 2, 3)).tolist()))


# -- npz source ---------------------------------------------------------------------------------------------
def test_npz_uint8_gray_and_float(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb)
    dm = make_dm(tmp_path / "rgb.npz", tmp_path, split=dict(val_size=2), batch_size=32)
    dm.setup("fit")
    assert len(dm.val_indices) == 2 and len(dm.train_indices) == 18
    assert sorted(torch.cat([dm.val_indices, dm.train_indices]).tolist()) == list(range(20))
    val = torch.cat(list(dm.val_dataloader()))
    torch.testing.assert_close(val, torch.from_numpy(rgb[dm.val_indices.numpy()]).permute(0, 3, 1, 2) / 255.0)
    again = make_dm(tmp_path / "rgb.npz", tmp_path, split=dict(val_size=2)).setup_images()
    assert torch.equal(again.val_indices, dm.val_indices)  # deterministic split

    gray = rng.random((3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "gray.npz", gray)  # unnamed single array, (N, H, W), float in [0, 1]
    dm = make_dm(tmp_path / "gray.npz", tmp_path, images=dict(num_channels=3), batch_size=8)
    dm.setup("fit")
    x = torch.stack([dm.prepared[i] for i in range(3)])
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


def test_npz_nan_or_inf_images_are_refused_with_the_file_and_indices(tmp_path):
    """Issue 31 item 5: NaN slipped past the [0, 1] check (comparisons with NaN are false) into training."""
    images = np.random.default_rng(0).random((1500, 4, 4, 1), dtype=np.float32)  # two reading chunks of 1024
    for i in (2, 1100, 1101, 1102, 1103, 1104):
        images[i, 1, 2, 0] = np.nan if i % 2 else -np.inf
    np.savez(tmp_path / "bad.npz", images=images)
    message = (f"{tmp_path / 'bad.npz'}: image 2 holds NaN/Inf values (6 image(s) do: 2, 1100, 1101, 1102, 1103, ...); "
               "remove or repair them: float images must be finite values in [0, 1]")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make_dm(tmp_path / "bad.npz", tmp_path).setup("fit")


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
    dm = ImageDataModule("torchvision:MNIST", root=str(tmp_path / "tv"), images=Images(size=28),
                         augment=Augment(random_flip=False), split=Split(val_size=0), stats=Stats(num_images=4),
                         batch_size=10)
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


def test_corrupt_image_is_named(tmp_path):
    save_png(tmp_path / "imgs/a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "imgs/b.png").write_bytes(b"\x89PNG not really")
    dm = make_dm(tmp_path / "imgs", tmp_path, stats=dict(num_images=2))
    with pytest.raises(ValueError, match=r"cannot read image file .*b\.png"):
        dm.setup("fit")


def test_missing_and_empty_sources(tmp_path):
    (tmp_path / "empty/sub").mkdir(parents=True)
    (tmp_path / "empty/sub/readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no png/jpg"):
        make_dm(tmp_path / "empty", tmp_path).setup("fit")
    with pytest.raises(FileNotFoundError, match="neither"):
        make_dm(tmp_path / "nowhere", tmp_path).setup("fit")
    with pytest.raises(ValueError, match="num_channels must be 1 or 3"):
        make_dm(tmp_path / "nowhere", tmp_path, images=dict(num_channels=2))


@pytest.mark.parametrize("cache", [False, True], ids=["loader", "cache_build"])
def test_a_bad_image_gives_the_same_line_with_loader_workers(tmp_path, capsys, monkeypatch, cache):
    """Issue 23 item 11: torch re-raises a worker's error as "Caught ValueError in DataLoader worker process 0.
    Original Traceback ..."; the command shows the worker's own message, the line of 0 workers."""
    from pds_lightning.cli import main

    for i in range(6):
        save_png(tmp_path / f"imgs/{i}.png", np.full((16, 16, 3), 40 * i, np.uint8))
    (tmp_path / "imgs/3.png").write_bytes(b"\x89PNG not really")
    monkeypatch.chdir(tmp_path)
    lines = []
    for workers in (0, 1):
        args = ["fit", "--config", str(TINY), "--data.source", str(tmp_path / "imgs"),
                "--data.images.num_channels", "3",
                "--model.net.init_args.num_channels", "3",
                "--data.split.val_size", "0", "--data.stats.num_images", "6",
                "--data.stats.cache_dir", "", "--data.num_workers", str(workers)]
        with pytest.raises(SystemExit) as exit_info:
            main(args + (["--data.images.cache_dir", str(tmp_path / f"cache{workers}")] if cache else []))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1
        lines.append(err[-1])
    bad = tmp_path / "imgs/3.png"
    assert lines[0] == lines[1] == (f"pds-lightning: error: cannot read image file {bad}: cannot identify image file "
                                    f"'{bad}' (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)")
