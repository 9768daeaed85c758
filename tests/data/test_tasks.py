"""Predict inputs of inpainting / colorization: settings checks, built-in masks, (index, seed) pairs."""

import numpy as np
import pytest
import torch

from helpers import make_datamodule
from pds_lightning.data.tasks import Colorize, Inpaint, TaskInputs, TaskSettings, builtin_mask


def test_builtin_masks_hide_the_named_region():
    centre = builtin_mask("center", 8)
    assert centre.shape == (1, 8, 8) and centre.sum() == 64 - 16
    assert (centre[0, 2:6, 2:6] == 0).all()
    assert (builtin_mask("left", 8)[0, :, :4] == 0).all() and (builtin_mask("left", 8)[0, :, 4:] == 1).all()
    assert (builtin_mask("bottom", 8)[0, 4:] == 0).all() and (builtin_mask("bottom", 8)[0, :4] == 1).all()


def test_pairs_cover_inputs_times_seeds_minus_those_done(tmp_path):
    images = [torch.full((1, 8, 8), i / 10) for i in range(5)]
    task = Inpaint(source="x", indices="1-3")
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
    dm = make_datamodule(tmp_path / "images.npz", tmp_path,
                         predict=dict(seeds="0", task=Inpaint(source=str(tmp_path / "images.npz"),
                                                              masks=str(tmp_path / "masks.npz"))))
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
        TaskInputs(Inpaint(source="x", indices="0-4"), [torch.zeros(1, 8, 8)] * 2, None, [0], set())


def test_tasks_are_components_each_with_its_own_operator():
    """Inpaint shows the image times its mask and keeps those pixels; Colorize shows the gray axis, keeps it and
    brings the colour into [0, 1] without changing it; neither refers to the other's name."""
    images = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    inpaint, colorize = Inpaint(source="x", mask="left"), Colorize(source="x")
    mask = inpaint.mask_of(images[0], None)
    assert torch.equal(mask, builtin_mask("left", 4))
    masks = mask.expand(2, 1, 4, 4)
    assert torch.equal(inpaint.shown(images, masks), images * masks)
    known = inpaint.known_part(images, masks)
    assert known.basis is None and torch.equal(known.y, images) and torch.equal(known.mask, masks.expand_as(images))
    gray = images.mean(1, keepdim=True)
    assert torch.equal(colorize.mask_of(images[0], None), torch.ones(1, 4, 4))
    assert torch.equal(colorize.shown(images, masks), gray.expand_as(images))
    known = colorize.known_part(gray.expand_as(images), masks)
    assert known.basis is not None and torch.equal(known.mask[:, 0], torch.ones(2, 4, 4))
    wild = images * 3 - 1  # colours outside [0, 1] around a gray inside it
    wild = wild - wild.mean(1, keepdim=True) + gray
    done = colorize.finish(wild)
    assert done.min() >= 0 and done.max() <= 1 and torch.allclose(done.mean(1, keepdim=True), gray, atol=1e-6)
    with pytest.raises(ValueError, match=r"^colorization needs RGB images \(3 channels\), got 1; set "):
        colorize.known_part(gray, masks)
    with pytest.raises(ValueError, match=r"^unknown built-in mask 'middle'; choose one of"):
        Inpaint(source="x", mask="middle")
    with pytest.raises(ValueError, match=r"^data.predict.task.source is empty"):
        Colorize()
    with pytest.raises(TypeError, match="masks"):  # colorization takes no masks
        Colorize(source="x", masks="m.npz")


def test_an_old_task_kind_is_translated_once_with_a_warning(tmp_path):
    np.savez(tmp_path / "images.npz", images=np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.warns(DeprecationWarning, match=r"^data.predict.task kind: colorize is deprecated; write "
                                                r"data.predict.task: \{class_path: pds_lightning.data.tasks.Colorize, "
                                                r"init_args: "):
        dm = make_datamodule(tmp_path / "images.npz", tmp_path,
                             predict=dict(seeds="0", task=TaskSettings(kind="colorize", source="x", indices="1")))
    assert type(dm.predict.task) is Colorize and (dm.predict.task.source, dm.predict.task.indices) == ("x", "1")
