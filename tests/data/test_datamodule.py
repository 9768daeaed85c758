"""`pds_lightning.data.datamodule.ImageDataModule`: resizing, flips and dequantisation, channels, upscaling,
the statistics (estimated, cached, in the state dict) and the predict seeds."""

import numpy as np
import pytest
import torch

from pds_lightning.statistics import ImageStatistics
from helpers import all_train, make_datamodule as make_dm, save_png


def test_resize_and_centre_crop(tmp_path):
    # 16 x 12 (W x H) image: the shorter side 12 -> 8 makes it ~10.7 x 8, then the central 8 x 8 is kept.
    array = np.zeros((12, 16), np.uint8)
    array[:, 8:] = 255
    save_png(tmp_path / "imgs/a.png", array)
    dm = make_dm(tmp_path / "imgs", tmp_path, images=dict(num_channels=1))
    dm.setup("fit")
    x = all_train(dm)[0, 0]
    assert x.shape == (8, 8)
    assert torch.all(x[:, :3] == 0) and torch.all(x[:, 5:] == 1)  # the edge stays in the centre


def test_flip_and_dequantisation(tmp_path):
    array = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    save_png(tmp_path / "imgs/a.png", array)
    plain = torch.from_numpy(array).float()[None] / 255.0
    dm = make_dm(tmp_path / "imgs", tmp_path, images=dict(num_channels=1),
                 augment=dict(random_flip=True, dequantize=True), shuffle_seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    seen_flipped = set()
    for epoch in range(12):  # the draws are a function of (shuffle_seed, epoch, index): one per epoch here
        loader.sampler.set_epoch(epoch)
        x = torch.cat(list(loader))[0]
        k = torch.floor(x * 256)  # (u + 255 x) / 256 with u in [0, 1) lies in [k/256, (k+1)/256)
        flipped = torch.equal(k, (plain * 255).round().flip(-1))
        assert flipped or torch.equal(k, (plain * 255).round())
        seen_flipped.add(flipped)
    assert seen_flipped == {True, False}


def test_augmentation_is_a_function_of_seed_epoch_and_index_not_of_workers_or_the_global_rng(tmp_path):
    """Issue 31 item 11: flips and dequantisation noise of a training epoch are the same in any loader process,
    so a resumed fit (and a fit with other num_workers) sees the very batches of an uninterrupted one."""
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(0, 256, (12, 8, 8), dtype=np.uint8))

    def epoch(workers: int, global_seed: int, number: int) -> torch.Tensor:
        dm = make_dm(tmp_path / "d.npz", tmp_path, augment=dict(random_flip=True, dequantize=True), shuffle_seed=3,
                     num_workers=workers, batch_size=4)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(number)
        torch.manual_seed(global_seed)
        return torch.cat(list(loader))

    first = epoch(0, 0, 2)
    assert torch.equal(epoch(1, 1, 2), first)  # another process and global seed: the same draws
    assert not torch.equal(epoch(0, 0, 3), first)  # another epoch: other draws
    assert not torch.equal(torch.floor(first * 256), first * 256)  # dequantised: off the 256 levels


def test_channel_conversion_or_rejection(tmp_path):
    folder = tmp_path / "mixed"
    save_png(folder / "a_gray.png", np.full((8, 8), 51, np.uint8))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 100, 0
    save_png(folder / "b_rgb.png", rgb)

    to_rgb = make_dm(folder, tmp_path, images=dict(num_channels=3), batch_size=2)
    to_rgb.setup("fit")
    x = torch.stack([to_rgb.prepared[i] for i in range(2)])
    assert x.shape == (2, 3, 8, 8) and torch.all(x[0] == 51 / 255)
    torch.testing.assert_close(x[1, :, 0, 0], torch.tensor([1.0, 100 / 255, 0.0]), rtol=0, atol=0)

    to_gray = make_dm(folder, tmp_path, images=dict(num_channels=1), batch_size=2)
    to_gray.setup("fit")
    y = torch.stack([to_gray.prepared[i] for i in range(2)])
    assert y.shape == (2, 1, 8, 8) and torch.all(y[0] == 51 / 255)
    assert y[1, 0, 0, 0].item() == pytest.approx(0.299 * 1 + 0.587 * 100 / 255, abs=1e-6)

    strict = make_dm(folder, tmp_path, images=dict(num_channels=1, convert_channels=False), batch_size=2)
    strict.setup("fit")
    with pytest.raises(ValueError, match=r"b_rgb\.png has 3 channel\(s\) but num_channels is 1"):
        all_train(strict)


def test_small_images_need_allow_upscale(tmp_path):
    save_png(tmp_path / "imgs/small.png", np.full((6, 6, 3), 128, np.uint8))
    with pytest.raises(ValueError, match=r"small\.png is 6x6 px, smaller than the image size 8.*allow_upscale"):
        all_train(make_dm(tmp_path / "imgs", tmp_path, batch_size=1).setup_images())
    dm = make_dm(tmp_path / "imgs", tmp_path, images=dict(allow_upscale=True)).setup_images()
    x = all_train(dm)
    assert x.shape == (1, 3, 8, 8)
    torch.testing.assert_close(x, torch.full_like(x, 128 / 255))


# -- statistics in the datamodule -----------------------------------------------------------------------------
def test_statistics_estimated_cached_and_in_state_dict(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images)
    dm = make_dm(tmp_path / "d.npz", tmp_path, images=dict(centered=True),
                 augment=dict(dequantize=True, random_flip=True), split=dict(val_size=4),
                 stats=dict(num_images=10, seed=5))
    dm.setup("fit")
    picked = dm.stats_indices()
    assert len(picked) == 10 and not set(picked.tolist()) & set(dm.val_indices.tolist())
    # Statistics use un-centred, un-augmented images in [0, 1].
    x = torch.from_numpy(images[picked.numpy()]).permute(0, 3, 1, 2).double() / 255.0
    torch.testing.assert_close(dm.statistics.power_mean, (torch.fft.fft2(x).abs() ** 2).mean(0))
    torch.testing.assert_close(dm.statistics.sq_mean, (x**2).mean(0))

    cache_files = list((tmp_path / "stats").glob("*.pt"))
    assert len(cache_files) == 1 and "8px_3ch_10img_seed5" in cache_files[0].name
    # A second module with the same settings reads the cache (shown by a marked cache file, valid for these
    # settings: same image shape and count; one that does not validate is recomputed, tests/data/test_cache.py).
    marked = ImageStatistics.from_moments(10, dm.statistics.power_mean, dm.statistics.mean / 2, dm.statistics.sq_mean)
    marked.save(cache_files[0])
    same = make_dm(tmp_path / "d.npz", tmp_path, split=dict(val_size=4), stats=dict(num_images=10, seed=5))
    same.setup("fit")
    torch.testing.assert_close(same.statistics.mean, dm.statistics.mean / 2, rtol=0, atol=0)
    other_seed = make_dm(tmp_path / "d.npz", tmp_path, split=dict(val_size=4), stats=dict(num_images=10, seed=6))
    other_seed.setup("validate")
    assert other_seed.statistics.count == 10 and len(list((tmp_path / "stats").glob("*.pt"))) == 2

    restored = make_dm(tmp_path / "d.npz", tmp_path)
    restored.load_state_dict(dm.state_dict())
    torch.testing.assert_close(restored.statistics.freq_statistic(), dm.statistics.freq_statistic(), rtol=0, atol=0)
    assert restored.statistics.count == 10


def test_predict_needs_no_images_and_excludes_seeds(tmp_path):
    dm = make_dm(tmp_path / "no_such_folder", tmp_path, predict=dict(seeds="0-9,20", batch_size=4))
    dm.setup("predict")
    dm.exclude_seeds = {1, 2, 20}
    batches = list(dm.predict_dataloader())
    assert all(b.dtype == torch.long for b in batches)
    assert [b.tolist() for b in batches] == [[0, 3, 4, 5], [6, 7, 8, 9]]
    with pytest.raises(ValueError, match="reversed"):
        make_dm(tmp_path, tmp_path, predict=dict(seeds="9-1"))
