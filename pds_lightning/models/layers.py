"""Basic layers of NCSN++ / DDPM++: initialisation, 1x1 / 3x3 convolutions, NIN, embeddings, attention.

Parameter names (``W``, ``b``, ``GroupNorm_0``, ``NIN_0`` ...) follow score_sde so that its released
state_dicts load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"swish": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2)}


def activation(name: str) -> nn.Module:
    """The activation module named by score_sde's ``nonlinearity`` field."""
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"nonlinearity {name!r} unknown; use one of {sorted(ACTIVATIONS)}") from None


def default_init_(weight: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """In place: score_sde's ``default_init``, variance scaling (fan_avg, uniform).

    Fans are taken as in JAX: axis 0 is 'out', axis 1 is 'in', the rest is the receptive field.
    A scale of 0 becomes 1e-10 (an almost-zero layer, e.g. the last convolution with init_scale=0).
    """
    scale = 1e-10 if scale == 0 else scale
    shape = weight.shape
    receptive = math.prod(shape[2:])
    fan_avg = (shape[0] + shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int | None = None,
         bias: bool = True, init_scale: float = 1.0) -> nn.Conv2d:
    """Convolution with DDPM initialisation (variance-scaled weight, zero bias)."""
    padding = kernel // 2 if padding is None else padding
    layer = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias)
    default_init_(layer.weight, init_scale)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    return conv(in_ch, out_ch, 1, init_scale=init_scale)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, padding: int = 1, init_scale: float = 1.0) -> nn.Conv2d:
    return conv(in_ch, out_ch, 3, stride=stride, padding=padding, init_scale=init_scale)


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    """Linear layer with DDPM initialisation."""
    layer = nn.Linear(in_dim, out_dim)
    default_init_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm as NCSN++ uses it: up to 32 groups of at least 4 channels."""
    return nn.GroupNorm(num_groups=min(channels // 4, 32), num_channels=channels, eps=1e-6)


class NIN(nn.Module):
    """Per-pixel linear map over channels ("network in network"), weight stored as [in, out]."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1):
        super().__init__()
        # score_sde computes the fans of the [in, out] matrix with axis 0 as 'out'; fan_avg is symmetric
        self.W = nn.Parameter(default_init_(torch.empty(in_dim, out_dim), init_scale))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.W) + self.b[:, None, None]


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of log(sigma): [sin(2 pi W s), cos(2 pi W s)].

    W is a frozen parameter (not a buffer) because score_sde stores it that way: it sits in the
    optimizer's parameter list but not in the EMA's.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        proj = s[:, None] * self.W[None, :] * (2 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) time steps, as in DDPM / transformers."""
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps must be 1-D [B], got shape {tuple(timesteps.shape)}")
    half = dim // 2
    rate = math.log(max_positions) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device) * -rate)
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels with a residual connection (score_sde's AttnBlockpp)."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        # [B, HW, C] tokens; scaled_dot_product_attention uses the same 1/sqrt(C) scale
        q, k, v = (nin(h).reshape(B, C, H * W).transpose(1, 2) for nin in (self.NIN_0, self.NIN_1, self.NIN_2))
        h = F.scaled_dot_product_attention(q, k, v)
        h = self.NIN_3(h.transpose(1, 2).reshape(B, C, H, W))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class Combine(nn.Module):
    """Merges the input pyramid into the main path: 1x1 conv of the pyramid, then sum or concat."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine {method!r} unknown; use 'sum' or 'cat'")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


def check_class_labels(class_labels: torch.Tensor, num_classes: int, batch: int) -> torch.Tensor:
    """Class indices [B] as long, each in 0..num_classes (num_classes itself is the null class of
    classifier-free guidance, the unconditional score); anything else is one clear error."""
    labels = torch.as_tensor(class_labels)
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"class labels must be a 1-d tensor of {batch} class indices, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got dtype {labels.dtype}")
    bad = (labels < 0) | (labels > num_classes)
    if bad.any():
        raise ValueError(f"class index {int(labels[bad][0])} is out of range: this model has {num_classes} classes "
                         f"(0..{num_classes - 1}; {num_classes} is the null class of classifier-free guidance); "
                         "fix data.predict.classes or the labels of the data")
    return labels.long()
