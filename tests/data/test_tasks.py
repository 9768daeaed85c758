"""Predict inputs of inpainting / colorization: settings checks, built-in masks, (index, seed) pairs."""

import numpy as np
import pytest
import torch

from helpers import make_datamodule
from pds_lightning.data.tasks import TaskInputs, TaskSettings, builtin_mask


def test_builtin_masks_hide_the_named_region():
    centre = builtin_mask("center", 8)
    assert centre.shape == (1, 8, 8) and centre.sum() == 64 - 16
    assert (centre[0, 2:6, 2:6] == 0).all()
    assert (builtin_mask("left", 8)[0, :, :4] == 0).all() and (builtin_mask("left", 8)[0, :, 4:] == 1).all()
    assert (builtin_mask("bottom", 8)[0, 4:] == 0).all() and (builtin_mask("bottom", 8)[0, :4] == 1).all()


def test_pairs_cover_inputs_times_seeds_minus_those_done(tmp_path):
    images = [torch.full((1, 8, 8), i / 10) for i in range(5)]
    task = TaskSettings(kind="inpaint", source="x", indices="1-3")
    inputs = TaskInputs(task, images, None, [0, 7], exclude={(2, 7)})
    assert inputs.pairs == [(1, 0), (1, 7), (2, 0), (3, 0), (3, 7)]
    item = inputs[2]
    assert item["index"] == 2 and item["seed"] == 0 and torch.equal(item["image"], images[2])
    assert torch.equal(item["mask"], builtin_mask("center", 8))


def test_masks_from_a_source_are_thresholded_and_resized(tmp_path):
    masks = np.zeros((3, 16, 16), dtype=np.uint8)
    masks[:, :8] = 255  # top half known
    np.savez(tmp_path / "masks.npz", images=masks)
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "images.npz", images=images)
    dm = make_datamodule(tmp_path / "images.npz", tmp_path, seeds="0",
                         task=TaskSettings(kind="inpaint", source=str(tmp_path / "images.npz"),
                                           masks=str(tmp_path / "masks.npz")))
    batch = next(iter(dm.predict_dataloader()))
    assert batch["kind"] == "inpaint" and "restrict" not in batch  # the sampler's PDS says how (pds.restrict)
    assert batch["image"].shape == (3, 1, 8, 8) and batch["index"].tolist() == [0, 1, 2]
    assert (batch["mask"][:, :, :4] == 1).all() and (batch["mask"][:, :, 4:] == 0).all()


def test_bad_task_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        TaskSettings(kind="outpaint", source="mnist")
    with pytest.raises(ValueError, match="source is empty"):
        TaskSettings(kind="inpaint")
    with pytest.raises(ValueError, match="no masks"):
        TaskSettings(kind="colorize", source="mnist", masks="m.npz")
    with pytest.raises(TypeError, match="restrict"):  # moved to the sampler: model.sampler.pds.restrict
        TaskSettings(source="mnist", restrict="all")
    with pytest.raises(ValueError, match="holds 2 images"):
        TaskInputs(TaskSettings(source="x", indices="0-4"), [torch.zeros(1, 8, 8)] * 2, None, [0], set())
