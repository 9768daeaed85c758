"""Helpers shared by the tests and by the scripts under tests/scripts (one home, imported as `helpers`:
pytest puts tests/ on sys.path via `pythonpath` in pyproject.toml; `clean_env` puts it on the scripts' PYTHONPATH).

- `clean_env`: the environment of a child process, without the launcher variables of an outer run.
- `fork_cli`, `kill_and_wait`: a CLI run in a forked child (one import for many runs) and its SIGKILL.
- `SignalAtStep`: a callback that signals its own process after an exact training step (resume tests).
- `disk_full_on_write`: an `os.write` that fails with ENOSPC half-way through the n-th PNG (or any write).
- `read_only_on_create`: an `os.open` that refuses to create files (EROFS), as a read-only file system does.
- `dead_pid`: the pid of a process that has exited (the writer of a stale temp file).
- `frechet_reference`, `kid_reference`: FID and KID written out from their definitions.
- `make_datamodule`, `save_png`, `all_train`: image folders and data modules for the data and CLI tests.
- `TinyFeatures`: a fixed random conv + pool feature net standing in for Inception (FID/KID tests).
- `GaussianModule`, `cpu_trainer`: the ScoreModule sampling API over an exact Gaussian score, in a real
  Lightning Trainer (tests of the writer and the sampling callback).
- `score_sde_loss`: score_sde's training loss (losses.py get_sde_loss_fn) written out for given draws t, z.
- `tiny_net`, `tiny_module`, `image_loader`: the 8 px NCSN++ ScoreModule (VE 0.01..16, 100 scales) and a
  loader of fixed random images that the module and training tests share.
- `flow_bomb`: a "billion laughs" YAML flow mapping, small enough for a quoted string or one CLI argument.
"""

import errno
import math
import os
import signal
import socket
import subprocess
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch import nn

from pds_lightning.data import ImageDataModule

from pds_lightning.models import NCSNpp
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.losses import DSMLoss
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC, PDS, Sampler, generate
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics

TESTS = Path(__file__).resolve().parent

# Set by torchrun / Lightning / an outer DDP run; a child that inherits them would join that run.
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK",
                      "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED")


def clean_env(**extra) -> dict[str, str]:
    """os.environ without launcher / SLURM variables, warnings off, tests/ importable (for `import helpers`),
    plus `extra` (e.g. the variables of a hand-launched node)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")}
    env["PYTHONWARNINGS"] = "ignore"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env.update({k: str(v) for k, v in extra.items()})
    return env



def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a test's own process group)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fork_cli(args: list[str], log: Path) -> int:
    """Run `pds_lightning.cli.main(args)` in a forked child writing to `log`; returns its pid. The child
    exits with the command's status (1 on an exception, whose traceback goes to the log). The CLI is imported
    here, before the fork, so every child shares the parent's single import (~7 s saved per run)."""
    from pds_lightning.cli import main

    pid = os.fork()
    if pid:
        return pid
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    # A forked child inherits the parent's thread-pool state; one thread avoids a 100x slowdown of
    # FFTs after fork (and equal settings in every run keep the numerics identical).
    torch.set_num_threads(1)
    code = 0
    try:
        main(args)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(code)


def wait_exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def kill_and_wait(pid: int) -> int | None:
    """SIGKILL a child and reap it; returns the signal that ended it (None if it had already exited)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else None


class SignalAtStep(L.Callback):
    """Sends `signum` (SIGTERM: a preemption; SIGKILL: a crash) to this process once fit has taken `step`
    optimizer steps, so a test interrupts a run with a real signal at an exact step instead of timing one."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def dead_pid() -> int:
    """The pid of a process that has just exited and been reaped: what a killed writer leaves in temp names."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


PNG_SIGNATURE = b"\x89PNG"


def disk_full_on_write(n: int, starting_with: bytes = PNG_SIGNATURE, real_write=os.write):
    """An `os.write` replacement: the n-th write (1-based) whose data starts with `starting_with` (a PNG by
    default; b"" counts every write) gets half its bytes on disk, then fails with ENOSPC."""
    hits = []

    def write(fd, data):
        if bytes(data[: len(starting_with)]) == starting_with:
            hits.append(1)
            if len(hits) == n:
                real_write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    return write


def read_only_on_create(real_open=os.open):
    """An `os.open` replacement: opening with O_CREAT fails with EROFS naming the file, as on a read-only file
    system (the tests run as root, for whom a 0o555 folder stays writable); other opens go through."""

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    return open_


def frechet_reference(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) with unbiased covariances; tr (S1 S2)^(1/2) as the
    sum of the square roots of the eigenvalues of S1 S2 (the FID paper's formula)."""
    a, b = f1.double().numpy(), f2.double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_trace = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root_trace)


def kid_reference(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3 over two sets of equal size (KID of one
    subset that is the whole set, so every random subset gives this value)."""
    x, y = real.double().numpy(), fake.double().numpy()
    m, d = x.shape
    assert y.shape[0] == m, (x.shape, y.shape)

    def k(u, v):
        return (u @ v.T / d + 1) ** 3

    kxx, kyy = k(x, x), k(y, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(x, y).sum() / m ** 2)


SIZE, CHANNELS, MEAN, VARIANCE = 8, 3, 0.5, 0.004


class GaussianModule(L.LightningModule):
    """The ScoreModule sampling API over an exact Gaussian score (no network to train).

    `sample` runs the package's sampler; the data statistics are the target's analytic moments.
    A single scalar parameter gives Lightning's fit loop something to optimise.
    """

    def __init__(self, sampler: Sampler | None = None, num_scales: int = 100):
        super().__init__()
        lam = power_law_spectrum(SIZE, SIZE, variance=VARIANCE, channels=CHANNELS)
        self.sde = VESDE(sigma_min=0.01, sigma_max=5.0, num_scales=num_scales)
        self.target = GaussianScore(MEAN, lam, self.sde)
        self.image_shape = (CHANNELS, SIZE, SIZE)
        self.centered = False
        self.sampler = sampler or PC(speed_up=4.0, pds=PDS(filters="both"), name="pds")
        self.w = nn.Parameter(torch.zeros(1))
        self.predicted_seeds: list[int] = []
        power = SIZE * SIZE * lam.clone()
        power[:, 0, 0] += (SIZE * SIZE * MEAN) ** 2
        self.data_statistics = ImageStatistics.from_moments(
            1000, power, torch.full_like(lam, MEAN), torch.full_like(lam, MEAN ** 2 + VARIANCE))

    def sample(self, sampler, seeds):
        result = generate(sampler, self.target, self.sde, seeds.to(self.device), self.image_shape,
                          statistics=self.data_statistics)
        result.x = result.x.clamp(0.0, 1.0)
        return result

    def training_step(self, batch, batch_idx):
        return (self.w - batch.mean()).square().sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", (self.w - batch.mean()).square().sum())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.predicted_seeds += batch.tolist()
        result = self.sample(self.sampler, batch.long())
        return {"seeds": batch.long().cpu(), "images": result.x.float().cpu(), "nfe": result.nfe}


TINY_SDE = dict(sigma_min=0.01, sigma_max=16.0, num_scales=100)


def tiny_net(**kw) -> NCSNpp:
    """An 8 px, 1-channel NCSN++ (nf 8, two levels, no attention) on TINY_SDE's noise levels; keywords override."""
    args = dict(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, image_size=8,
                num_channels=1, **TINY_SDE)
    return NCSNpp(**{**args, **kw})


def tiny_module(net: nn.Module | None = None, sde=None, statistics: bool = False, **kw) -> ScoreModule:
    """ScoreModule of `net` (default tiny_net(), its channels and size) on `sde` (default VESDE(**TINY_SDE)),
    lr 1e-2 with one warm-up step; `statistics`: PDS statistics of 32 fixed random images."""
    net = tiny_net() if net is None else net
    geometry = dict(image_size=getattr(net, "image_size", SIZE), num_channels=getattr(net, "num_channels", 1))
    module = ScoreModule(net, VESDE(**TINY_SDE) if sde is None else sde, **{"lr": 1e-2, "warmup": 1, **geometry, **kw})
    if statistics:
        x = torch.rand(32, *module.image_shape, generator=torch.Generator().manual_seed(0))
        module.set_statistics(ImageStatistics(module.image_shape).update(x))
    return module


class NaNOnOneRank(DSMLoss):
    """DSMLoss that turns NaN on rank `rank` of a process group from training step `step` (0-based) on: a divergence
    only one rank sees (validation calls, without gradients, are not counted). `--model.loss helpers.NaNOnOneRank`."""

    def __init__(self, rank: int = 1, step: int = 2):
        super().__init__()
        self.rank, self.step, self._calls = rank, step, 0

    def __call__(self, model, sde, x, *, generator=None):
        loss = super().__call__(model, sde, x, generator=generator)
        if torch.is_grad_enabled():
            self._calls += 1
            on_rank = torch.distributed.is_initialized() and torch.distributed.get_rank() == self.rank
            if on_rank and self._calls > self.step:
                return loss * float("nan")
        return loss


def image_loader(n: int = 16, channels: int = 1, size: int = 8, batch_size: int = 4, labels: int = 0):
    """n fixed random images in [0, 1] (seed 0) in batches; with `labels` > 0 (images, i % labels) pairs."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    tensors = [torch.rand(n, channels, size, size, generator=g)] + ([torch.arange(n) % labels] if labels else [])
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size)


def cpu_trainer(tmp_path, **kw):
    """A quiet one-process CPU Trainer in tmp_path; keywords override."""
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_model_summary=False, enable_progress_bar=False, default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kw})


def make_datamodule(source, tmp_path, **kwargs) -> ImageDataModule:
    """An 8 px data module on `source` with its statistics cache in tmp_path (no validation split, no flips);
    keywords override these (`over_groups`)."""
    settings = dict(images=dict(size=8), augment=dict(random_flip=False), split=dict(val_size=0),
                    stats=dict(num_images=0, cache_dir=str(tmp_path / "stats")))
    return ImageDataModule(source=str(source), **over_groups(settings, kwargs))


def over_groups(settings: dict, overrides: dict) -> dict:
    """ImageDataModule keywords: `overrides` over `settings`, a group given as a dict (images=dict(size=8)) field
    by field."""
    return {**settings, **{key: {**settings.get(key, {}), **value} if isinstance(value, dict) else value
                           for key, value in overrides.items()}}


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def all_train(dm) -> torch.Tensor:
    return torch.cat(list(dm.train_dataloader()))


class TinyFeatures(nn.Module):
    """A fixed random conv + pool net: features are deterministic functions of the image (weights from a
    local generator, so the global RNG is left alone)."""

    def __init__(self, channels: int = 3, dim: int = 6):
        super().__init__()
        self.conv = nn.utils.skip_init(nn.Conv2d, channels, dim, 3, padding=1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(0.3 * torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(0.1 * torch.randn(self.conv.bias.shape, generator=g))

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(-2, -1))


def gaussian_statistics(lam: torch.Tensor, mean_value: float) -> ImageStatistics:
    """The exact moments of a stationary Gaussian image model (per-mode variance `lam` [C, H, W], constant
    mean): E|fft2 x|^2 = H W lam + |fft2 mean|^2, E x^2 = mean(lam) + mean^2."""
    C, H, W = lam.shape
    mean = torch.full((C, H, W), mean_value, dtype=torch.float64)
    power = H * W * lam + torch.fft.fft2(mean).abs().square()
    return ImageStatistics.from_moments(1, power, mean, lam.mean() + mean ** 2)


class BatchNoise:
    """One local generator for a whole batch: cheaper than per-seed generators for large test batches."""

    device = torch.device("cpu")

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def noise(self, like):
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype)


# ---- score_sde's training loss, written out (losses.py get_sde_loss_fn; sde_lib's VE / VP / sub-VP) -----
VE_ARGS, VP_ARGS = (0.01, 50.0), (0.1, 20.0)


def score_sde_marginal_and_g2(kind, t):
    """mean coefficient, std and g(t)^2 of score_sde's sde_lib, written out for the test."""
    if kind == "ve":
        smin, smax = VE_ARGS
        std = smin * (smax / smin) ** t
        return torch.ones_like(t), std, std ** 2 * 2 * math.log(smax / smin)
    b0, b1 = VP_ARGS
    log_mean = -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0
    beta = b0 + t * (b1 - b0)
    if kind == "vp":
        return log_mean.exp(), (1 - (2 * log_mean).exp()).sqrt(), beta
    return log_mean.exp(), 1 - (2 * log_mean).exp(), beta * (1 - torch.exp(-2 * b0 * t - (b1 - b0) * t ** 2))


def score_sde_loss(score_fn, kind, x, t, z, reduce_mean, likelihood_weighting):
    """score_sde's loss for given draws t, z: mean or 0.5 * sum over pixels, times g^2 if weighted; batch mean."""
    a, std, g2 = score_sde_marginal_and_g2(kind, t)
    a, std = a[:, None, None, None], std[:, None, None, None]
    score = score_fn(a * x + std * z, t)
    per_pixel = (score + z / std) ** 2 if likelihood_weighting else (score * std + z) ** 2
    per_pixel = per_pixel.reshape(x.shape[0], -1)
    losses = per_pixel.mean(-1) if reduce_mean else 0.5 * per_pixel.sum(-1)
    return (losses * g2 if likelihood_weighting else losses).mean()
def preconditioner_of(sampler, statistics):
    """The PDS preconditioner M of a sampler component, None without PDS."""
    return None if sampler.pds is None else sampler.pds.preconditioner(statistics)


def run_sampler(sampler, score_fn, sde, shape, noise, statistics=None, **kwargs):
    """A sampler component run with a given noise source (moment and parity tests)."""
    return sampler(score_fn, sde, shape, noise=noise, preconditioner=preconditioner_of(sampler, statistics), **kwargs)


def flow_bomb(levels: int, width: int = 10) -> str:
    """A "billion laughs" flow mapping: each level a list of `width` aliases to the level above (width**levels
    values once expanded), in a few hundred bytes on one line."""
    parts = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    parts += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "{" + ", ".join(parts) + "}"


# ---- exact output laws of samplers affine in their draws (Gaussian targets) -----------------------------------------
def impulse_noise(draws: int, shape, rows_per_draw: int = 1):
    """RecordedNoise of unit impulses: row 0 all zeros, row 1 + j r + p a one at pixel p of draw j (p < r). A sampler
    affine in its draws then returns its mean in row 0 and, minus it, the response to each impulse."""
    from pds_lightning.sampling import RecordedNoise

    n = 1 + draws * rows_per_draw
    stream = [torch.zeros((n,) + tuple(shape), dtype=torch.float64) for _ in range(draws)]
    for j in range(draws):
        for p in range(rows_per_draw):
            stream[j].view(n, -1)[1 + j * rows_per_draw + p, p] = 1.0
    return RecordedNoise(stream)


def circulant_law(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean image, per-mode variances over the full fft2 grid) from a one-channel impulse run x [1 + draws, 1, H, W]
    of a sampler whose impulse responses are circulant (stationary target, frequency-only M)."""
    x = x[:, 0]
    return x[0], (torch.fft.fft2(x[1:] - x[0]).abs() ** 2).sum(0)


def predict_error(capsys, *args: str) -> str:
    """stderr of `pds-lightning predict --config tests/configs/tiny.yaml ARGS`, which must fail with exit status 1
    and one error line (a user error, as the CLI prints it)."""
    import pytest

    from pds_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--config", str(TESTS / "configs" / "tiny.yaml"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("pds-lightning: error:") == 1, err
    return err
