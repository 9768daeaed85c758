import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pds_lightning.data import ImageDataModule, Images, Split, Stats
from pds_lightning.statistics import ImageStatistics
from helpers import clean_env

REPO = Path(__file__).resolve().parent.parent


def images(n=10, c=3, h=8, w=6, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_moments_equal_the_formula():
    x = images()
    stats = ImageStatistics((3, 8, 6)).update(x)
    assert stats.count == 10
    power_mean = (torch.fft.fft2(x).abs() ** 2).mean(0)
    torch.testing.assert_close(stats.power_mean, power_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.mean, x.mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.sq_mean, (x**2).mean(0), rtol=1e-12, atol=0)
    # The official raw statistics, float32 as the official .npy files.
    freq, space = stats.freq_statistic(), stats.space_statistic()
    assert freq.dtype == space.dtype == torch.float32
    torch.testing.assert_close(freq, torch.log(1 + power_mean).float())
    torch.testing.assert_close(space, (x**2).mean(0).float())


def test_power_of_constant_images_is_analytic():
    # A constant image c has fft2 = c * H * W at DC (unnormalised forward FFT) and 0 elsewhere.
    c = torch.tensor([0.2, 0.6]).view(2, 1, 1, 1).expand(2, 1, 4, 4)
    stats = ImageStatistics((1, 4, 4)).update(c)
    expected = torch.zeros(1, 4, 4, dtype=torch.float64)
    expected[0, 0, 0] = ((0.2 * 16) ** 2 + (0.6 * 16) ** 2) / 2
    torch.testing.assert_close(stats.power_mean, expected, rtol=1e-6, atol=1e-9)
    assert stats.sq_mean[0, 2, 3].item() == pytest.approx((0.04 + 0.36) / 2)


def test_mean_of_squared_magnitude_not_square_of_mean():
    # Two images with opposite-sign AC parts: the batch-mean spectrum has no AC, the power mean does.
    base = torch.full((1, 1, 4, 4), 0.5)
    ac = torch.zeros(1, 1, 4, 4)
    ac[..., ::2, :] = 0.25
    ac[..., 1::2, :] = -0.25
    stats = ImageStatistics((1, 4, 4)).update(torch.cat([base + ac, base - ac]))
    assert stats.power_mean[0, 2, 0].item() == pytest.approx((0.25 * 16) ** 2)


def test_streamed_equals_one_shot():
    x = images(n=13)
    one_shot = ImageStatistics((3, 8, 6)).update(x)
    streamed = ImageStatistics((3, 8, 6))
    for chunk in x.split([1, 5, 0, 7]):
        streamed.update(chunk.float())  # float32 batches too: accumulation is float64
    assert streamed.count == 13
    for key in ("power_mean", "mean", "sq_mean"):
        torch.testing.assert_close(getattr(streamed, key), getattr(one_shot, key), rtol=1e-6, atol=1e-9)


def test_state_dict_save_load_and_from_moments(tmp_path):
    stats = ImageStatistics((3, 8, 6)).update(images())
    path = tmp_path / "sub" / "stats.pt"
    stats.save(path)
    assert os.listdir(path.parent) == ["stats.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"count", "power_mean", "mean", "sq_mean"} and int(raw["count"]) == 10
    loaded = ImageStatistics.load(path)
    rebuilt = ImageStatistics.from_moments(raw["count"], raw["power_mean"], raw["mean"], raw["sq_mean"])
    for other in (loaded, rebuilt):
        assert other.count == 10
        torch.testing.assert_close(other.freq_statistic(), stats.freq_statistic(), rtol=0, atol=0)
        torch.testing.assert_close(other.sq_mean, stats.sq_mean, rtol=1e-15, atol=0)
    # Loaded statistics keep accumulating correctly.
    more = images(n=4, seed=1)
    loaded.update(more)
    direct = ImageStatistics((3, 8, 6)).update(torch.cat([images(), more]))
    torch.testing.assert_close(loaded.power_mean, direct.power_mean, rtol=1e-12, atol=0)


def test_a_full_disk_names_the_statistics_file_and_leaves_none(tmp_path, monkeypatch):
    """Issue 31 item 4: a full disk while writing the statistics is an OSError naming the target (torch.save into
    the temp file raised its own RuntimeError), and neither the file nor a temp is left."""
    import errno

    from helpers import disk_full_on_write

    stats = ImageStatistics((3, 8, 6)).update(images())
    path = tmp_path / "stats.pt"
    monkeypatch.setattr(os, "write", disk_full_on_write(1, starting_with=b""))
    with pytest.raises(OSError, match=f"No space left on device: '{path}'") as info:
        stats.save(path)
    assert info.value.errno == errno.ENOSPC and os.listdir(tmp_path) == []


def test_bad_input_is_refused(tmp_path):
    stats = ImageStatistics((3, 8, 6))
    with pytest.raises(RuntimeError, match="empty"):
        stats.freq_statistic()
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 8, 6\]"):
        stats.update(torch.rand(2, 1, 8, 6))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.update(images() * 2 - 1)
    with pytest.raises(ValueError, match="shape"):
        ImageStatistics((3, 8))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="bad.pt"):
        ImageStatistics.load(bad)
    with pytest.raises(ValueError, match="shape"):
        stats.load_state_dict(ImageStatistics((1, 8, 6)).state_dict())


def test_all_reduce_without_process_group_is_identity():
    stats = ImageStatistics((3, 8, 6)).update(images())
    before = stats.power_mean.clone()
    assert stats.all_reduce() is stats and stats.count == 10
    torch.testing.assert_close(stats.power_mean, before, rtol=0, atol=0)


@pytest.mark.slow
def test_two_process_gloo_estimate_equals_one_process(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, images=rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8))
    # 1 process, in this process.
    dm = ImageDataModule(source=str(data), images=Images(size=8), split=Split(val_size=2),
                         stats=Stats(num_images=11, cache_dir=""))
    dm.setup("fit")
    single = dm.statistics
    assert single.count == 11
    expected = torch.from_numpy(np.load(data)["images"][dm.stats_indices().numpy()]).permute(0, 3, 1, 2) / 255.0
    torch.testing.assert_close(single.power_mean, (torch.fft.fft2(expected.double()).abs() ** 2).mean(0))
    # A cache that only rank 0 reads first: marked values (valid for these settings: 11 images), so we can see
    # both ranks end with them.
    cache = tmp_path / "cache"
    marked = ImageStatistics.from_moments(11, single.power_mean, single.mean, single.sq_mean * 0 + 0.5)
    marked.save(ImageDataModule(source=str(data), images=Images(size=8), split=Split(val_size=2),
                                stats=Stats(num_images=11, cache_dir=str(cache))).setup_images().stats_cache_path())

    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, str(REPO / "tests/scripts/ddp_statistics.py"), str(data), str(out), "11", str(cache)]
    result = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MASTER_PORT" not in os.environ

    for rank in range(2):
        state = torch.load(out / f"rank{rank}.pt", weights_only=True)
        assert int(state["count"]) == 11  # 6 + 5 images, summed over the two ranks
        for key in ("power_mean", "mean", "sq_mean"):
            torch.testing.assert_close(state[key], getattr(single, key), rtol=1e-12, atol=0)
        cached = torch.load(out / f"cached_rank{rank}.pt", weights_only=True)
        assert int(cached["count"]) == 11 and torch.all(cached["sq_mean"] == 0.5)
