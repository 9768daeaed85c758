"""Inpainting and colorization with the PC samplers (vanilla and PDS), score_sde's controllable generation.

The known part of an image is a set of coordinates y = U^T x (per pixel, U an orthonormal C x C channel basis)
selected by a 0/1 mask on y. Inpainting: U = I, the mask marks known pixels. Colorization: U's first column is
the gray axis (1, 1, 1)/sqrt(3), so the known coordinate is sqrt(3) (R + G + B)/3 (score_sde's basis; the
other two columns are any orthonormal completion, which leaves the result unchanged).

Semantics (score_sde): x_T = known data on the known part, the prior elsewhere; after every corrector and
every predictor update the known part is re-imposed from the forward process, y_known(t) = mean_t(y) +
std_t z. The returned image carries the input's known part exactly (t -> 0 of the forward mean). One
difference: score_sde builds the noise-free x_mean from the *noisy* x on the unknown part (so `denoise`
leaves the filled region's last noise in); here x_mean keeps the update's own mean there.

PDS mixes pixels, so its preconditioner is restricted in one of two ways (`restrict`):
  'project'  (default) M acts on the whole image and the update is then projected: the known part is
             overwritten, exactly, after each step. With M = I this is score_sde's vanilla sampler.
  'subspace' M' = P M with P the projection onto the unknown part: drift P M M^T P g, noise P M z; the update
             never moves the known part (and the Langevin step size sees only the unknown part).
Either way the known part of the output equals the input's exactly (tests/sampling/test_conditional.py).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from pds_lightning.preconditioner import Preconditioner
from pds_lightning.sampling.correctors import CORRECTORS
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sampling.predictors import predictor_class
from pds_lightning.sampling.samplers import (SampleResult, _check_finite, _CountingScore, identity_if_none,
                                             initial_sample)
from pds_lightning.sampling.settings import SamplerSettings
from pds_lightning.sde import SDE, per_sample

#: Ways the PDS preconditioner is kept off the known part (module docstring).
RESTRICT_CHOICES = ("project", "subspace")
#: The conditional tasks and the channel count each needs (None: any).
TASKS = {"inpaint": None, "colorize": 3}


def color_basis(dtype=torch.float64) -> Tensor:
    """Orthonormal RGB basis [3, 3] (columns): the gray axis (1, 1, 1)/sqrt(3), then (-2, 1, 1)/sqrt(6), (0, 1, -1)/sqrt(2)."""
    return torch.tensor([[1 / math.sqrt(3), -2 / math.sqrt(6), 0.0],
                         [1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)],
                         [1 / math.sqrt(3), 1 / math.sqrt(6), -1 / math.sqrt(2)]], dtype=dtype)


class KnownPart:
    """The known coordinates y = U^T data (mask 1) of a batch in model space; `impose` puts them into x.

    `basis` None is U = I (inpainting: pixels are kept bit for bit); `mask` [B or 1, C or 1, H, W] in y's
    coordinates, 1 known and 0 unknown.
    """

    def __init__(self, data: Tensor, mask: Tensor, basis: Tensor | None = None):
        if data.dim() != 4:
            raise ValueError(f"known data must be [B, C, H, W], got {tuple(data.shape)}")
        mask = mask.to(device=data.device, dtype=data.dtype)
        if mask.dim() != 4 or not set(torch.unique(mask).tolist()) <= {0.0, 1.0}:
            raise ValueError("mask must be a [B, C or 1, H, W] tensor of 0 (unknown) and 1 (known)")
        self.basis = None if basis is None else basis.to(device=data.device, dtype=data.dtype)
        if self.basis is not None and tuple(self.basis.shape) != (data.shape[1],) * 2:
            raise ValueError(f"channel basis {tuple(self.basis.shape)} does not fit {data.shape[1]} channels")
        self.mask = mask.expand_as(data)
        self.y = self.decouple(data)

    def decouple(self, x: Tensor) -> Tensor:
        """y = U^T x per pixel."""
        return x if self.basis is None else torch.einsum("bihw,ij->bjhw", x, self.basis)

    def couple(self, y: Tensor) -> Tensor:
        """x = U y per pixel."""
        return y if self.basis is None else torch.einsum("bjhw,ij->bihw", y, self.basis)

    def impose(self, x: Tensor, y_known: Tensor) -> Tensor:
        """x with its known coordinates replaced by y_known's."""
        if self.basis is None:
            return torch.where(self.mask.bool(), y_known, x)
        return self.couple(torch.where(self.mask.bool(), y_known, self.decouple(x)))

    def unknown(self, x: Tensor) -> Tensor:
        """P x: the unknown part of x (its known coordinates set to 0)."""
        return self.impose(x, torch.zeros_like(x))

    def forward_sample(self, sde: SDE, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """(mean_t(y) + std_t z, mean_t(y)): the known coordinates diffused to t by the forward process."""
        mean, std = sde.marginal_prob(self.y, t)
        return mean + per_sample(std) * z, mean


class RestrictedPreconditioner:
    """M' = P M: noise P M z and drift P M M^T P g, so an update leaves the known part where it is."""

    is_identity = False

    def __init__(self, preconditioner: Preconditioner, known: KnownPart):
        self.preconditioner, self.known = preconditioner, known

    def noise(self, z: Tensor) -> Tensor:
        return self.known.unknown(self.preconditioner.noise(z))

    def drift(self, g: Tensor) -> Tensor:
        return self.known.unknown(self.preconditioner.drift(self.known.unknown(g)))


@torch.no_grad()
def conditional_pc_sampler(score_fn, sde: SDE, known: KnownPart, *, noise, preconditioner=None,
                           restrict: str = "project", predictor: str = "reverse_diffusion",
                           corrector: str = "langevin", snr: float = 0.16, n_corrector_steps: int = 1,
                           n_steps: int | None = None, speed_up: float = 1.0, eps: float | None = None,
                           denoise: bool = True, step_size: str = "sample", check_finite_every: int = 0,
                           pds_predictor: str = "official") -> SampleResult:
    """PC sampling with the known part re-imposed after every corrector and predictor update (score_sde)."""
    if restrict not in RESTRICT_CHOICES:
        raise ValueError(f"unknown restrict {restrict!r}; choose 'project' (M on the whole image, known part "
                         "re-imposed after each update) or 'subspace' (M' = P M on the unknown part only)")
    sde, N, eps = sde.discretised(n_steps, speed_up, eps)
    counted = _CountingScore(score_fn)
    base = identity_if_none(preconditioner)
    preconditioner = RestrictedPreconditioner(base, known) if restrict == "subspace" and not base.is_identity else base
    predict = predictor_class(predictor, pds_predictor)(sde, counted, preconditioner, noise)
    correct = CORRECTORS[corrector](sde, counted, preconditioner, noise, snr, n_corrector_steps, step_size)
    shape = tuple(known.y.shape)
    prior = initial_sample(sde, shape, base, noise, known.y.dtype)
    x = known.impose(prior, known.y)  # score_sde: the clean known part at T, replaced after the first update
    x_mean = x
    for i, t in enumerate(sde.time_grid(N, eps, device=x.device)):
        vec_t = torch.full((shape[0],), float(t), device=x.device)
        for update in (correct.update, predict.update):
            x, x_mean = update(x, vec_t)
            y_t, y_mean = known.forward_sample(sde, vec_t, noise.noise(x))
            x, x_mean = known.impose(x, y_t), known.impose(x_mean, y_mean)
        _check_finite(x, i, N, check_finite_every)
    return SampleResult(known.impose(x_mean if denoise else x, known.y), counted.calls)


def clip_keeping_gray(x: Tensor) -> Tensor:
    """RGB images [B, 3, H, W] brought into [0, 1] by shrinking each pixel's colour towards its gray
    (R + G + B)/3, which stays exact (a plain clamp would change it); gray must already lie in [0, 1]."""
    gray = x.mean(1, keepdim=True)
    chroma = x - gray
    room = torch.where(chroma > 0, (1 - gray) / chroma.clamp_min(1e-12), gray / (-chroma).clamp_min(1e-12))
    scale = room.amin(1, keepdim=True).clamp(0.0, 1.0)
    return gray + scale * chroma


def known_part_for(task: str, images: Tensor, mask: Tensor | None = None) -> KnownPart:
    """The KnownPart of a task over model-space images [B, C, H, W]: 'inpaint' keeps mask == 1 pixels (mask
    [B, 1 or C, H, W]); 'colorize' keeps the gray axis of RGB images (gray inputs replicated to 3 channels)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    if task == "inpaint":
        if mask is None:
            raise ValueError("inpainting needs a mask (1 = known pixel, 0 = to fill)")
        return KnownPart(images, mask)
    if images.shape[1] != 3:
        raise ValueError(f"colorization needs RGB images (3 channels), got {images.shape[1]}; set "
                         "data.num_channels: 3 and a model trained on colour images")
    mask = torch.zeros_like(images[:1])
    mask[:, 0] = 1.0
    return KnownPart(images, mask, color_basis())


def generate_conditional(settings: SamplerSettings, score_fn, sde: SDE, seeds: Sequence[int] | Tensor,
                         known: KnownPart, statistics=None, restrict: str = "project") -> SampleResult:
    """One completion per (row of `known`, seed), like `generate`: the PC sampler of `settings`, vanilla or PDS."""
    if settings.method != "pc":
        raise ValueError(f"inpainting and colorization run the PC sampler; sampler {settings.name!r} has "
                         f"method {settings.method!r}: set method: pc")
    if settings.alpha == "auto":
        raise ValueError("generate_conditional takes a numeric alpha; resolve 'auto' first (ScoreModule does)")
    seeds_list = seeds.flatten().tolist() if isinstance(seeds, Tensor) else [int(s) for s in seeds]
    if len(seeds_list) != known.y.shape[0]:
        raise ValueError(f"{len(seeds_list)} seeds for {known.y.shape[0]} inputs; give one seed per input row")
    settings.steps_for(sde)
    device = known.y.device
    preconditioner = settings.preconditioner_from(statistics)
    if preconditioner is not None:
        preconditioner = preconditioner.to(device)
    kwargs = settings.sampler_kwargs()
    return conditional_pc_sampler(score_fn, sde, known, noise=SeededNoise(seeds_list, device),
                                  preconditioner=preconditioner, restrict=restrict, **kwargs)
