"""FIR up/down-sampling (StyleGAN2 style, as used by NCSN++) in plain PyTorch: no compiled extension.

``upfirdn2d`` = zero-insertion upsampling, padding, FIR filtering, then decimation; everything else
is built on it. Tensors keep the device and dtype of the input.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pds_lightning.models.layers import conv3x3, default_init_


def fir_kernel_2d(k: Sequence[float], like: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Separable FIR taps -> normalised 2-D kernel (sums to ``gain``) on like's device and dtype."""
    k = torch.as_tensor(k, dtype=like.dtype, device=like.device)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D, got shape {tuple(k.shape)}")
    return k / k.sum() * gain


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (pad[0] before, pad[1] after, both axes), convolve, decimate.

    A negative pad crops. The kernel is flipped so this is a true convolution, as in StyleGAN2.
    """
    B, C, H, W = x.shape
    if up > 1:
        x = x.reshape(B, C, H, 1, W, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(B, C, H * up, W * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = torch.flip(kernel, (0, 1)).expand(C, 1, *kernel.shape)
    # decimating by a strided convolution keeps samples 0, down, 2*down, ... as the reference does
    return F.conv2d(x, weight, stride=down, groups=C)


def upsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR upsampling by ``factor`` (gain factor**2 keeps constant images constant)."""
    kernel = fir_kernel_2d(k, x, gain=factor ** 2)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k: Sequence[float], factor: int = 2) -> torch.Tensor:
    """FIR downsampling by ``factor``."""
    kernel = fir_kernel_2d(k, x)
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling."""
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling."""
    return F.avg_pool2d(x, factor, stride=factor)


class FIRConv2d(nn.Module):
    """3x3 convolution fused with FIR up- or down-sampling (score_sde's up_or_down_sampling.Conv2d)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, up: bool = False, down: bool = False,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), use_bias: bool = True):
        super().__init__()
        if up and down:
            raise ValueError("FIRConv2d: choose up or down, not both")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"FIRConv2d: kernel must be odd and positive, got {kernel}")
        self.weight = nn.Parameter(default_init_(torch.empty(out_ch, in_ch, kernel, kernel)))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if use_bias else None
        self.up, self.down, self.kernel = up, down, kernel
        self.resample_kernel = tuple(resample_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.up:
            # transposed stride-2 convolution, then FIR smoothing (padding applied once)
            fir = fir_kernel_2d(self.resample_kernel, x, gain=4)
            p = (fir.shape[0] - 2) - (self.kernel - 1)
            x = F.conv_transpose2d(x, torch.flip(w, (2, 3)).transpose(0, 1), stride=2)
            x = upfirdn2d(x, fir, pad=((p + 1) // 2 + 1, p // 2 + 1))
        elif self.down:
            fir = fir_kernel_2d(self.resample_kernel, x)
            p = (fir.shape[0] - 2) + (self.kernel - 1)
            x = F.conv2d(upfirdn2d(x, fir, pad=((p + 1) // 2, p // 2)), w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.kernel // 2)
        return x if self.bias is None else x + self.bias[None, :, None, None]


class Upsample(nn.Module):
    """2x upsampling: FIR or nearest, optionally with a convolution (``Conv2d_0`` / ``Conv_0``)."""

    def __init__(self, in_ch: int | None = None, out_ch: int | None = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FIRConv2d(in_ch, out_ch, up=True, resample_kernel=fir_kernel)
        elif with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        self.with_conv, self.fir, self.fir_kernel = with_conv, fir, tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else upsample_2d(x, self.fir_kernel)
        h = naive_upsample_2d(x)
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """2x downsampling: FIR or average pooling, optionally with a (strided) convolution."""

    def __init__(self, in_ch: int | None = None, out_ch: int | None = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = FIRConv2d(in_ch, out_ch, down=True, resample_kernel=fir_kernel)
        elif with_conv:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.with_conv, self.fir, self.fir_kernel = with_conv, fir, tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fir:
            return self.Conv2d_0(x) if self.with_conv else downsample_2d(x, self.fir_kernel)
        if self.with_conv:
            # TF 'SAME'-style asymmetric padding before the stride-2 valid convolution
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return naive_downsample_2d(x)
