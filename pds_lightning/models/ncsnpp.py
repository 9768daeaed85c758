"""NCSN++ / DDPM++ (Song et al. 2021) in plain PyTorch, parameter-compatible with score_sde.

The constructor takes score_sde's ``config.model`` field names, plus ``image_size``,
``num_channels`` and ``centered`` from ``config.data``, so a released config copies over literally.
All layers live in one ``all_modules`` ModuleList, in score_sde's order, because the released
state_dicts name parameters by their index in that list; ``forward`` walks the list with a cursor.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Iterator, Sequence

import torch
from torch import nn

from pds_lightning.models.layers import (AttnBlock, Combine, GaussianFourierProjection, activation,
                                         check_class_labels, conv3x3, dense, group_norm, timestep_embedding)
from pds_lightning.models.resampling import Downsample, Upsample
from pds_lightning.models.resblocks import ResnetBlockBigGAN, ResnetBlockDDPM
from pds_lightning.sde import check_step_count

_CHOICES = {
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
    "resblock_type": ("ddpm", "biggan"),
    "attention_type": ("ddpm",),
    "normalization": ("groupnorm",),
}


def _check_choice(field: str, value: str) -> str:
    value = value.lower()
    if value not in _CHOICES[field]:
        raise ValueError(f"{field}={value!r} is not supported; use one of {_CHOICES[field]}")
    return value


class NCSNpp(nn.Module):
    """Noise-conditional U-Net of score_sde (``name: ncsnpp``); ``forward(x, labels)``.

    ``labels`` is sigma (Fourier embedding, VE continuous) or a time step / level index (positional
    embedding). With ``scale_by_sigma`` the output is divided by sigma (positional: sigmas[labels]).
    ``sigma_min``, ``sigma_max``, ``num_scales`` define the ``sigmas`` buffer score_sde stores.
    ``num_classes`` (None or 0: off, no new parameters, score_sde's network) adds a class embedding
    ``class_embed`` of num_classes + 1 rows (the last: the null class of classifier-free guidance) to the
    time embedding; ``forward(x, labels, class_labels)``, class_labels None meaning the null class.
    """

    def __init__(self, nf: int = 128, ch_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 4,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, resamp_with_conv: bool = True,
                 conditional: bool = True, fir: bool = True, fir_kernel: Sequence[float] = (1, 3, 3, 1),
                 skip_rescale: bool = True, resblock_type: str = "biggan", progressive: str = "none",
                 progressive_input: str = "residual", progressive_combine: str = "sum",
                 attention_type: str = "ddpm", embedding_type: str = "fourier", init_scale: float = 0.0,
                 fourier_scale: float = 16.0, conv_size: int = 3, nonlinearity: str = "swish",
                 normalization: str = "GroupNorm", scale_by_sigma: bool = True, sigma_min: float = 0.01,
                 sigma_max: float = 50.0, num_scales: int = 1000, image_size: int = 32, num_channels: int = 3,
                 centered: bool = False, num_classes: int | None = None):
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 0):
            raise ValueError(f"num_classes must be None/0 (unconditional) or a positive number of classes, got {num_classes}")
        if num_classes and not conditional:
            raise ValueError("num_classes needs conditional=True: the class embedding is added to the time embedding")
        progressive = _check_choice("progressive", progressive)
        progressive_input = _check_choice("progressive_input", progressive_input)
        combine = _check_choice("progressive_combine", progressive_combine)
        embedding_type = _check_choice("embedding_type", embedding_type)
        resblock_type = _check_choice("resblock_type", resblock_type)
        _check_choice("attention_type", attention_type)
        _check_choice("normalization", normalization)
        if conv_size != 3:
            raise ValueError(f"conv_size={conv_size} is not supported; NCSN++ uses 3")
        n_levels = len(ch_mult)
        if image_size % 2 ** (n_levels - 1):
            raise ValueError(f"image_size={image_size} must be divisible by 2**(len(ch_mult)-1)={2 ** (n_levels - 1)}")

        self.act = act = activation(nonlinearity)
        # score_sde keeps the SMLD noise levels (geometric, sigma_max -> sigma_min) as a buffer
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s > 0
                   for s in (sigma_min, sigma_max)):
            raise ValueError(f"NCSNpp: sigma_min and sigma_max must be finite numbers > 0 (its noise levels, geometric "
                             f"from sigma_max to sigma_min), got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
        check_step_count(num_scales, "model.net num_scales")
        sigmas = torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num_scales, dtype=torch.float64))
        self.register_buffer("sigmas", sigmas.float())
        self.nf, self.ch_mult, self.num_res_blocks = nf, tuple(ch_mult), num_res_blocks
        self.attn_resolutions = tuple(attn_resolutions)
        self.conditional, self.skip_rescale, self.scale_by_sigma = conditional, skip_rescale, scale_by_sigma
        self.resblock_type, self.embedding_type = resblock_type, embedding_type
        self.progressive, self.progressive_input = progressive, progressive_input
        self.centered, self.image_size, self.num_channels = centered, image_size, num_channels
        resolutions = [image_size // 2 ** i for i in range(n_levels)]

        AttnBlock_ = partial(AttnBlock, init_scale=init_scale, skip_rescale=skip_rescale)
        if resblock_type == "ddpm":
            ResBlock = partial(ResnetBlockDDPM, act=act, dropout=dropout, init_scale=init_scale,
                               skip_rescale=skip_rescale, temb_dim=4 * nf)
        else:
            ResBlock = partial(ResnetBlockBigGAN, act=act, dropout=dropout, fir=fir, fir_kernel=fir_kernel,
                               init_scale=init_scale, skip_rescale=skip_rescale, temb_dim=4 * nf)
        # parameter-free resamplers of the image pyramids (outside all_modules, as in score_sde)
        if progressive == "output_skip":
            self.pyramid_upsample = Upsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)
        if progressive_input == "input_skip":
            self.pyramid_downsample = Downsample(fir=fir, fir_kernel=fir_kernel, with_conv=False)

        modules: list[nn.Module] = []
        if embedding_type == "fourier":
            modules.append(GaussianFourierProjection(embedding_size=nf, scale=fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if conditional:
            modules += [dense(embed_dim, 4 * nf), dense(4 * nf, 4 * nf)]

        # encoder
        C = num_channels
        pyramid_ch = C
        modules.append(conv3x3(C, nf))
        skip_channels = [nf]
        ch = nf
        for level in range(n_levels):
            for _ in range(num_res_blocks):
                modules.append(ResBlock(in_ch=ch, out_ch=nf * ch_mult[level]))
                ch = nf * ch_mult[level]
                if resolutions[level] in self.attn_resolutions:
                    modules.append(AttnBlock_(channels=ch))
                skip_channels.append(ch)
            if level != n_levels - 1:
                if resblock_type == "ddpm":
                    modules.append(Downsample(in_ch=ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
                else:
                    modules.append(ResBlock(down=True, in_ch=ch))
                if progressive_input == "input_skip":
                    modules.append(Combine(dim1=pyramid_ch, dim2=ch, method=combine))
                    if combine == "cat":
                        ch *= 2
                elif progressive_input == "residual":
                    modules.append(Downsample(in_ch=pyramid_ch, out_ch=ch, with_conv=True, fir=fir,
                                              fir_kernel=fir_kernel))
                    pyramid_ch = ch
                skip_channels.append(ch)

        # middle
        ch = skip_channels[-1]
        modules += [ResBlock(in_ch=ch), AttnBlock_(channels=ch), ResBlock(in_ch=ch)]

        # decoder
        pyramid_ch = 0
        for level in reversed(range(n_levels)):
            for _ in range(num_res_blocks + 1):
                modules.append(ResBlock(in_ch=ch + skip_channels.pop(), out_ch=nf * ch_mult[level]))
                ch = nf * ch_mult[level]
            if resolutions[level] in self.attn_resolutions:
                modules.append(AttnBlock_(channels=ch))
            if progressive == "output_skip":
                modules += [group_norm(ch), conv3x3(ch, C, init_scale=init_scale)]
                pyramid_ch = C
            elif progressive == "residual":
                if level == n_levels - 1:
                    modules += [group_norm(ch), conv3x3(ch, ch)]
                else:
                    modules.append(Upsample(in_ch=pyramid_ch, out_ch=ch, with_conv=True, fir=fir,
                                            fir_kernel=fir_kernel))
                pyramid_ch = ch
            if level != 0:
                if resblock_type == "ddpm":
                    modules.append(Upsample(in_ch=ch, with_conv=resamp_with_conv, fir=fir, fir_kernel=fir_kernel))
                else:
                    modules.append(ResBlock(in_ch=ch, up=True))
        assert not skip_channels
        if progressive != "output_skip":
            modules += [group_norm(ch), conv3x3(ch, C, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(modules)
        self.num_classes = int(num_classes) if num_classes else None
        if self.num_classes:
            # Outside all_modules so score_sde's parameter indices stay; zero init: starts unconditional.
            self.class_embed = nn.Embedding(self.num_classes + 1, 4 * nf)
            nn.init.zeros_(self.class_embed.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if class_labels is not None and not self.num_classes:
            raise ValueError("class labels given to a network without a class embedding; build it with "
                             "num_classes (and train it on labelled data), or sample without classes")
        modules: Iterator[nn.Module] = iter(self.all_modules)
        step = partial(next, modules)
        if self.embedding_type == "fourier":
            used_sigmas = labels
            temb = step()(torch.log(labels))
        else:
            used_sigmas = self.sigmas[labels.long()] if self.scale_by_sigma else None
            temb = timestep_embedding(labels, self.nf).to(x.dtype)
        if self.conditional:
            temb = step()(temb)
            temb = step()(self.act(temb))
            if self.num_classes:
                temb = temb + self.class_embed(self._class_labels(class_labels, x)).to(temb.dtype)
        else:
            temb = None

        if not self.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
        n_levels = len(self.ch_mult)

        # encoder
        pyramid = x
        hs = [step()(x)]
        for level in range(n_levels):
            for _ in range(self.num_res_blocks):
                h = step()(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = step()(h)
                hs.append(h)
            if level != n_levels - 1:
                h = step()(hs[-1]) if self.resblock_type == "ddpm" else step()(hs[-1], temb)
                if self.progressive_input == "input_skip":
                    pyramid = self.pyramid_downsample(pyramid)
                    h = step()(pyramid, h)
                elif self.progressive_input == "residual":
                    pyramid = self._merge(step()(pyramid), h)
                    h = pyramid
                hs.append(h)

        # middle
        h = hs[-1]
        h = step()(h, temb)
        h = step()(h)
        h = step()(h, temb)

        # decoder
        pyramid = None
        for level in reversed(range(n_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = step()(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = step()(h)
            if self.progressive == "output_skip":
                out = self._norm_act_conv(step, h)
                pyramid = out if pyramid is None else self.pyramid_upsample(pyramid) + out
            elif self.progressive == "residual":
                if level == n_levels - 1:
                    pyramid = self._norm_act_conv(step, h)
                else:
                    pyramid = self._merge(step()(pyramid), h)
                    h = pyramid
            if level != 0:
                h = step()(h) if self.resblock_type == "ddpm" else step()(h, temb)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self._norm_act_conv(step, h)
        if next(modules, None) is not None:
            raise RuntimeError("NCSNpp.forward did not use every module; architecture and forward disagree")
        if self.scale_by_sigma:
            h = h / used_sigmas.to(h.dtype).reshape(-1, *([1] * (h.ndim - 1)))
        return h

    def _class_labels(self, class_labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Checked class indices [B]; None is the null class (unconditional) for every sample."""
        if class_labels is None:
            return torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
        return check_class_labels(class_labels, self.num_classes, x.shape[0]).to(x.device)

    def _norm_act_conv(self, step, h: torch.Tensor) -> torch.Tensor:
        norm, conv = step(), step()  # taken in list order: GroupNorm, then conv
        return conv(self.act(norm(h)))

    def _merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b) / math.sqrt(2.0) if self.skip_rescale else a + b


class DDPMpp(NCSNpp):
    """DDPM++: the NCSN++ family with score_sde's VP CIFAR-10 defaults (positional embedding, no FIR,
    no progressive paths, centered data, no division by sigma)."""

    def __init__(self, embedding_type: str = "positional", fir: bool = False, progressive_input: str = "none",
                 scale_by_sigma: bool = False, centered: bool = True, **kwargs):
        super().__init__(embedding_type=embedding_type, fir=fir, progressive_input=progressive_input,
                         scale_by_sigma=scale_by_sigma, centered=centered, **kwargs)
