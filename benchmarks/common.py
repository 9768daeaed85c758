"""What several benchmarks share: the trained reference models, their data, scoring and grid images.

Benchmarks are modules of the `benchmarks` package, run from the repository root as `python -m benchmarks.<name>`.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from pds_lightning.fileio import write_atomic
from pds_lightning.features import DigitFeatures
from pds_lightning.metrics import feature_moments, frechet_distance, log_spectral_distance
from pds_lightning.statistics import ImageStatistics

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "demo": ("configs/demo.yaml", "runs/demo/checkpoints/last.ckpt"),
    "patches": ("configs/patches.yaml", "runs/patches/checkpoints/last.ckpt"),
    "demo_edm": ("configs/demo_edm.yaml", "runs/demo_edm/checkpoints/last.ckpt"),
    "patches_edm": ("configs/patches_edm.yaml", "runs/patches_edm/checkpoints/last.ckpt"),
}
BOOTSTRAP = 200


def load_model(config: str, ckpt: str):
    """(ScoreModule with the checkpoint's weights and statistics, its data module after setup_images)."""
    from pds_lightning.cli import cli_main

    cli = cli_main(["--config", str(ROOT / config), "--trainer.logger", "false"], run=False)
    path = ROOT / ckpt
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; train it with `pds-lightning fit --config {config}`")
    cli.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    return cli.model.eval(), cli.datamodule.setup_images()


def image_stack(dm, indices) -> torch.Tensor:
    return torch.stack([dm.prepared[int(i)] for i in indices])


def training_images(dm, n: int) -> torch.Tensor:
    """n training images, one fixed random pick: the 'floor' rows score real images with it."""
    pick = torch.randperm(len(dm.train_indices), generator=torch.Generator().manual_seed(2))[:n]
    return image_stack(dm, dm.train_indices[pick])


class Scorer:
    """Spectral error and FD-digits of image sets against one fixed reference, with bootstrap errors."""

    def __init__(self, reference: torch.Tensor, features: DigitFeatures):
        self.features = features
        self.ref_power = ImageStatistics(reference.shape[1:]).update(reference).power_mean
        self.ref_moments = feature_moments(self._features(reference))

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.features(b) for b in x.split(250)]).double()

    def _spectral(self, x: torch.Tensor) -> float:
        return log_spectral_distance(ImageStatistics(x.shape[1:]).update(x).power_mean, self.ref_power)

    def _fd(self, f: torch.Tensor) -> float:
        return frechet_distance(*feature_moments(f), *self.ref_moments)

    def score(self, x: torch.Tensor, seed: int = 0) -> dict[str, float]:
        f = self._features(x)
        out = {"spectral_error": self._spectral(x), "fd_digits": self._fd(f)}
        g = torch.Generator().manual_seed(seed)
        boot = {"spectral_error": [], "fd_digits": []}
        for _ in range(BOOTSTRAP):
            idx = torch.randint(0, len(x), (len(x),), generator=g)
            boot["spectral_error"].append(self._spectral(x[idx]))
            boot["fd_digits"].append(self._fd(f[idx]))
        for key, values in boot.items():
            out[key + "_se"] = float(torch.tensor(values).std())
        return out


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    from torchvision.utils import make_grid
    from PIL import Image

    grid = make_grid(images[: nrow * nrow], nrow=nrow, padding=1, pad_value=1.0)
    array = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buffer.getvalue())


def alpha_text(alpha: float | None) -> str:
    """An alpha `auto` resolved to, as the reports print it (None: vanilla, no preconditioner)."""
    return "vanilla" if alpha is None else f"{alpha:g}"


def markdown_table(names, keys, heading, cell) -> list[str]:
    """A markdown table: one row per sampler name, one column per key; `cell(name, key)` gives the text."""
    lines = ["| sampler | " + " | ".join(heading(k) for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    return lines + [f"| {name} | " + " | ".join(cell(name, k) for k in keys) + " |" for name in names]


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a note) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return None
    return plt


def save_figure(fig, path: Path) -> None:
    """The figure as a PNG at 100 dpi, written atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_atomic(path, buffer.getvalue())
