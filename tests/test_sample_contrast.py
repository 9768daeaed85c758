"""The two measures of benchmarks/sample_contrast.py on images whose answer is known in closed form."""

import math

import pytest
import torch

from benchmarks.sample_contrast import contrast, high_frequency_share


def cosine(k: int, size: int = 32) -> torch.Tensor:
    """cos(2 pi k y / size) on a size x size grid, constant along x."""
    y = torch.arange(size, dtype=torch.float64)[:, None].expand(size, size)
    return torch.cos(2 * math.pi * k * y / size)


def test_contrast_is_the_mean_per_image_std():
    sign = torch.tensor([1.0, -1.0]).repeat(3 * 32 * 16)
    x = torch.stack([0.1 * sign, 0.2 * sign, 0.5 + 0.6 * sign]).reshape(3, 3, 32, 32)
    n = 3 * 32 * 32
    assert contrast(x) == pytest.approx((0.1 + 0.2 + 0.6) / 3 * math.sqrt(n / (n - 1)), rel=1e-6)


@pytest.mark.parametrize(("k", "share"), [(1, 0.0), (8, 0.0), (9, 1.0), (16, 1.0)])
def test_high_frequency_share_splits_at_a_quarter_cycle_per_pixel(k, share):
    x = (0.5 + 0.2 * cosine(k)).expand(2, 3, 32, 32)
    assert high_frequency_share(x) == pytest.approx(share, abs=1e-9)


def test_high_frequency_share_weighs_by_power():
    x = (cosine(1) + 2 * cosine(12) + cosine(3).T).expand(1, 1, 32, 32)
    assert high_frequency_share(x) == pytest.approx(4 / (1 + 4 + 1), rel=1e-9)
