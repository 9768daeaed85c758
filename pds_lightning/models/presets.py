"""Small NCSN++ / DDPM++ settings for CPU tests and demos (kwargs for ``NCSNpp``).

``kind='ncsnpp'`` gives the VE flavour (Fourier embedding of sigma, FIR, residual input pyramid,
output divided by sigma, data in [0, 1]); ``kind='ddpmpp'`` the VP / sub-VP flavour (positional
embedding of 999 t, no FIR, no pyramids, data centred in [-1, 1]).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pds_lightning.models.ncsnpp import NCSNpp

_FLAVOURS = {
    "ncsnpp": dict(embedding_type="fourier", fir=True, progressive_input="residual", scale_by_sigma=True,
                   centered=False),
    "ddpmpp": dict(embedding_type="positional", fir=False, progressive_input="none", scale_by_sigma=False,
                   centered=True),
}


def _settings(kind: str, image_size: int, num_channels: int, **arch: Any) -> dict[str, Any]:
    if kind not in _FLAVOURS:
        raise ValueError(f"kind={kind!r} unknown; use one of {sorted(_FLAVOURS)}")
    return dict(arch, **_FLAVOURS[kind], image_size=image_size, num_channels=num_channels,
                resblock_type="biggan", progressive="none", skip_rescale=True, dropout=0.1)


def tiny(image_size: int = 16, num_channels: int = 3, kind: str = "ncsnpp", **overrides: Any) -> dict[str, Any]:
    """~82k parameters, 3 levels, attention at half resolution: for 8-16 px unit tests."""
    arch = dict(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(image_size // 2,))
    return {**_settings(kind, image_size, num_channels, **arch), **overrides}


def demo(image_size: int = 32, num_channels: int = 1, kind: str = "ncsnpp", **overrides: Any) -> dict[str, Any]:
    """~460k parameters, 4 levels, attention at image_size/4: CPU training on 32 px MNIST."""
    arch = dict(nf=16, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(image_size // 4,))
    return {**_settings(kind, image_size, num_channels, **arch), **overrides}


PRESETS = {"tiny": tiny, "demo": demo}


def build(name: str, **kwargs: Any) -> nn.Module:
    """``NCSNpp`` from a preset name; kwargs go to the preset (image_size, num_channels, kind, overrides)."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} unknown; use one of {sorted(PRESETS)}")
    return NCSNpp(**PRESETS[name](**kwargs))
