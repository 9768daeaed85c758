"""Train the small digit classifier whose features give the FD-digits metric; write its weights.

Run: ``python -m benchmarks.digit_classifier [--epochs 15] [--output benchmarks/assets/digit_classifier.pt]``
(about a minute on one CPU core; deterministic on a given machine).

Split: the embedded 5,000 MNIST digits are split exactly as `ImageDataModule(source="mnist")` splits them
(split_seed 0, 256 validation images). The validation images are never used here: they are the held-out
reference of the Frechet distances in `steps_vs_quality.py`. Of the score model's training images, 1,000
(drawn with seed 1) are the classifier's test split, the rest its training split.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pds_lightning.fileio import write_atomic
from pds_lightning.data import EMBEDDED, ImageDataModule, Images, embedded_data_dir
from pds_lightning.features import DEFAULT_WEIGHTS, DigitClassifier

NUM_TEST = 1000
TEST_SEED = 1


def digit_splits() -> dict[str, torch.Tensor]:
    """Indices into the embedded MNIST of the classifier's train and test splits and the held-out reference."""
    dm = ImageDataModule(source="mnist", images=Images(size=32, num_channels=1)).setup_images()
    pick = torch.randperm(len(dm.train_indices), generator=torch.Generator().manual_seed(TEST_SEED))
    return {"train": dm.train_indices[pick[NUM_TEST:]].sort().values,
            "test": dm.train_indices[pick[:NUM_TEST]].sort().values,
            "reference": dm.val_indices}


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All embedded digits as float images [N, 1, 32, 32] in [0, 1] and their labels [N]."""
    with np.load(embedded_data_dir() / EMBEDDED["mnist"], allow_pickle=False) as archive:
        images = torch.from_numpy(archive["images"]).permute(0, 3, 1, 2).float() / 255.0
        labels = torch.from_numpy(archive["labels"]).long()
    return images, labels


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` px (zero fill): digits are not always centred in samples."""
    padded = F.pad(x, (max_shift,) * 4)
    out = torch.empty_like(x)
    size = x.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + size, dx:dx + size]
    return out


@torch.no_grad()
def accuracy(net: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    return float((net(images).argmax(1) == labels).float().mean())


def train(epochs: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0) -> tuple[DigitClassifier, dict]:
    images, labels = load_digits()
    split = digit_splits()
    x_train, y_train = images[split["train"]], labels[split["train"]]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * -(-len(x_train) // batch_size))
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(net(random_shift(x_train[idx], 2, g)), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: train loss {total / len(x_train):.4f}")
    info = {
        "num_train": len(x_train),
        "num_test": len(split["test"]),
        "test_accuracy": accuracy(net, images[split["test"]], labels[split["test"]]),
        "reference_accuracy": accuracy(net, images[split["reference"]], labels[split["reference"]]),
    }
    return net, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--output", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    net, info = train(args.epochs)
    print(f"test accuracy {info['test_accuracy']:.4f} on {info['num_test']} held-out digits; "
          f"{info['reference_accuracy']:.4f} on the {256} reference digits")
    buffer = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "feature_dim": net.feature_dim, **info}, buffer)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output, buffer.getvalue())
    print(f"wrote {args.output} ({len(buffer.getvalue()) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
