"""Image-space helpers shared by data, model, callbacks and metrics: value ranges, luma, uint8 and PNG.

Images are float `[C, H, W]` or `[B, C, H, W]` in [0, 1] ("unit range") unless a name says otherwise;
the model works in "model space", [-1, 1] when `centered` and [0, 1] otherwise.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

# ITU-R BT.601 luma, the weights Pillow uses for RGB -> L.
LUMA = (0.299, 0.587, 0.114)  # BT.601 luminance weights of R, G, B


def to_model_space(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """Images in [0, 1] -> the model's space ([-1, 1] when centered)."""
    return x * 2.0 - 1.0 if centered else x


def to_unit_range(x: torch.Tensor, centered: bool) -> torch.Tensor:
    """The inverse of `to_model_space`: model-space images (e.g. samples) -> [0, 1] units."""
    return (x + 1) / 2 if centered else x


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """RGB images `[..., 3, H, W]` -> gray `[..., 1, H, W]` with the BT.601 weights `LUMA`."""
    weights = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x * weights).sum(-3, keepdim=True)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as float [C, H, W] in [0, 1]: gray modes give 1 channel, every other mode 3 (alpha dropped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32) / 65535.0  # 16-bit gray
        return torch.from_numpy(np.clip(array, 0.0, 1.0))[None]
    image = image.convert("L" if image.mode in ("1", "L", "LA", "F") else "RGB")
    array = np.asarray(image, dtype=np.uint8)
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images `[B, C, H, W]` in [0, 1] -> uint8 `[B, H, W, C]`, rounding to nearest (as torchvision's save_image)."""
    x = images.detach().float().clamp(0.0, 1.0).mul(255.0).add(0.5).floor()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def encode_png(image_hwc: np.ndarray) -> bytes:
    """Lossless 8-bit PNG bytes of one uint8 `[H, W, C]` image (C = 1 grey, 3 RGB, 4 RGBA)."""
    arr = image_hwc[..., 0] if image_hwc.shape[-1] == 1 else image_hwc
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["LUMA", "encode_png", "pil_to_tensor", "rgb_to_gray", "to_model_space", "to_uint8", "to_unit_range"]
