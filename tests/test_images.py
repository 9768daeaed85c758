"""`pds_lightning.images`: value ranges, BT.601 gray (as Pillow computes it), 8-bit PIL decoding, uint8 and PNG."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from pds_lightning.fileio import write_atomic
from pds_lightning.images import LUMA, encode_png, pil_to_tensor, rgb_to_gray, to_model_space, to_uint8, to_unit_range


def test_model_space_maps_unit_range_to_minus_one_one_and_back():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(to_model_space(x, centered=True), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(to_unit_range(to_model_space(x, centered=True), centered=True), x)
    assert to_model_space(x, centered=False) is x and to_unit_range(x, centered=False) is x


def test_gray_uses_bt601_weights_like_pillow():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    pillow = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)
    ours = rgb_to_gray(pil_to_tensor(Image.fromarray(rgb)))  # [3, H, W] -> [1, H, W]
    assert ours.shape == (1, 5, 7)
    # Pillow rounds the weighted sum to an integer; ours keeps it exact.
    assert np.abs(ours[0].double().numpy() * 255 - pillow).max() <= 0.5 + 1e-6
    batch = torch.stack([pil_to_tensor(Image.fromarray(rgb))] * 2)  # [B, 3, H, W] works alike
    assert torch.equal(rgb_to_gray(batch)[1], ours)
    assert sum(LUMA) == pytest.approx(1.0, abs=1e-12)  # gray stays in [0, 1]


def test_pil_to_tensor_channels_and_16_bit():
    assert pil_to_tensor(Image.new("LA", (4, 3), (128, 7))).shape == (1, 3, 4)
    rgba = pil_to_tensor(Image.new("RGBA", (4, 3), (255, 0, 51, 9)))
    assert torch.equal(rgba[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    deep = pil_to_tensor(Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16)))
    assert deep.shape == (1, 2, 2) and torch.equal(deep, torch.ones(1, 2, 2))


def test_uint8_rounds_to_nearest_and_png_roundtrips(tmp_path):
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 1.2, -0.1]).reshape(1, 1, 2, 3)
    assert to_uint8(x)[0, ..., 0].tolist() == [[0, 1, 0], [255, 255, 0]]
    img = to_uint8(torch.rand(1, 3, 5, 4, generator=torch.Generator().manual_seed(0)))[0]
    path = tmp_path / "a.png"
    write_atomic(path, encode_png(img))
    with Image.open(path) as decoded:
        assert np.array_equal(np.asarray(decoded), img)
    assert os.listdir(tmp_path) == ["a.png"]
