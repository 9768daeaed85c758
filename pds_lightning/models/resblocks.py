"""Residual blocks of NCSN++ / DDPM++, conditioned on the noise embedding (score_sde names)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from pds_lightning.models.layers import NIN, conv1x1, conv3x3, dense, group_norm
from pds_lightning.models.resampling import (downsample_2d, naive_downsample_2d, naive_upsample_2d,
                                             upsample_2d)


class _ResnetBlock(nn.Module):
    """Shared body: norm -> act -> conv -> + Dense(temb) -> norm -> act -> dropout -> conv."""

    def _init_body(self, act: nn.Module, in_ch: int, out_ch: int, temb_dim: int | None, dropout: float,
                   skip_rescale: bool, init_scale: float) -> None:
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        self.act, self.in_ch, self.out_ch, self.skip_rescale = act, in_ch, out_ch, skip_rescale

    def _second_half(self, h: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.act(self.GroupNorm_1(h))
        return self.Conv_1(self.Dropout_0(h))

    def _merge(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockDDPM(_ResnetBlock):
    """DDPM residual block; channel changes go through ``NIN_0`` (or ``Conv_2`` with conv_shortcut)."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 conv_shortcut: bool = False, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self._init_body(act, in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.conv_shortcut = conv_shortcut

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        h = self._second_half(h, temb)
        if self.in_ch != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return self._merge(x, h)


class ResnetBlockBigGAN(_ResnetBlock):
    """BigGAN residual block that may resample (up or down) both paths; shortcut is a 1x1 ``Conv_2``."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel: Sequence[float] = (1, 3, 3, 1), skip_rescale: bool = True,
                 init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self._init_body(act, in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale)
        self.has_shortcut = in_ch != out_ch or up or down
        if self.has_shortcut:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return upsample_2d(x, self.fir_kernel) if self.fir else naive_upsample_2d(x)
        if self.down:
            return downsample_2d(x, self.fir_kernel) if self.fir else naive_downsample_2d(x)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self._second_half(self.Conv_0(h), temb)
        if self.has_shortcut:
            x = self.Conv_2(x)
        return self._merge(x, h)
