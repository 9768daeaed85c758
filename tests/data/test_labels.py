"""Class labels through the data module: embedded MNIST, a folder per class, torchvision; predict classes."""

import numpy as np
import pytest
import torch

from pds_lightning.data import Augment, ImageDataModule, Images, Predict, Split, Stats
from pds_lightning.data.sources import embedded_data_dir
from tests.data.test_sources import write_idx
from tests.helpers import make_datamodule, save_png


def test_embedded_mnist_batches_carry_the_archive_labels(tmp_path):
    dm = ImageDataModule("mnist", images=Images(size=32), augment=Augment(random_flip=False), split=Split(val_size=256),
                         stats=Stats(num_images=0), conditional=True, num_workers=0)
    dm.setup("fit")
    with np.load(embedded_data_dir() / "mnist_32.npz") as archive:
        images, labels = archive["images"], archive["labels"]
    assert dm.num_classes == 10 and dm.class_names == [str(k) for k in range(10)]
    data = dm.train_dataloader().dataset
    for k in (0, 17, 1234, len(data) - 1):
        x, y = data[k]
        i = int(dm.train_indices[k])
        assert int(y) == int(labels[i])
        torch.testing.assert_close(x, torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255.0)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (64, 1, 32, 32) and y.dtype == torch.long
    assert y.tolist() == labels[dm.val_indices[:64].numpy()].tolist()


def test_unconditional_batches_stay_image_tensors(tmp_path):
    dm = ImageDataModule("mnist", images=Images(size=32), split=Split(val_size=16), stats=Stats(num_images=0),
                         num_workers=0)
    dm.setup("fit")
    assert torch.is_tensor(next(iter(dm.val_dataloader()))) and dm.num_classes is None


def test_folder_per_class_labels_are_sorted_sub_folder_names(tmp_path):
    for name, value in (("dog", 200), ("cat", 50), ("emu", 120)):
        for j in range(2):
            save_png(tmp_path / "img" / name / f"{j}.png", np.full((8, 8), value + j, np.uint8))
    dm = make_datamodule(tmp_path / "img", tmp_path, conditional=True, images=dict(num_channels=1), batch_size=6)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog", "emu"]
    x, y = next(iter(dm.train_dataloader()))
    expected = {50: 0, 51: 0, 200: 1, 201: 1, 120: 2, 121: 2}
    assert y.tolist() == [expected[round(float(v) * 255)] for v in x[:, 0, 0, 0]]
    save_png(tmp_path / "img" / "loose.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="outside class sub-folders"):
        make_datamodule(tmp_path / "img", tmp_path, conditional=True).setup("fit")


def test_torchvision_labels_are_its_targets(tmp_path):
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    digits = np.stack([np.full((28, 28), 10 * k, np.uint8) for k in range(10)])
    targets = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", digits)
        write_idx(raw / f"{split}-labels-idx1-ubyte", targets)
    dm = ImageDataModule("torchvision:MNIST", root=str(tmp_path / "tv"), images=Images(size=28),
                         augment=Augment(random_flip=False), split=Split(val_size=0), stats=Stats(num_images=0),
                         batch_size=10, conditional=True, num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    index = (x[:, 0, 0, 0] * 255 / 10).round().long()
    assert y.tolist() == targets[index.numpy()].tolist()


def test_npz_without_labels_is_refused_for_conditional_training(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((20, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="no 'labels' array"):
        make_datamodule(tmp_path / "x.npz", tmp_path, conditional=True).setup("fit")


def test_predict_classes_cycle_over_the_seed_list_and_survive_exclusion(tmp_path):
    dm = ImageDataModule(predict=Predict(seeds="10-14", classes="3,7", batch_size=2))
    batches = list(dm.predict_dataloader())
    assert [b[0].tolist() for b in batches] == [[10, 11], [12, 13], [14]]
    assert [b[1].tolist() for b in batches] == [[3, 7], [3, 7], [3]]
    dm.exclude_seeds = {11}  # a resumed run: the remaining seeds keep their classes
    seeds, classes = (torch.cat(t) for t in zip(*dm.predict_dataloader()))
    assert seeds.tolist() == [10, 12, 13, 14] and classes.tolist() == [3, 3, 7, 3]
    with pytest.raises(ValueError, match="malformed class range part 'x'"):
        ImageDataModule(predict=Predict(classes="0-3,x"))
