"""Class-conditional ScoreModule: class embedding off by default, label dropout, training on labelled
batches, sampling by (seed, class), and checkpoints without labels that still load and sample."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import helpers
from helpers import image_loader, tiny_net
from pds_lightning.losses import DSMLoss, Loss
from pds_lightning.models.score import LabelledScore
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC
from pds_lightning.sde import VESDE


def tiny_module(net, sde=None, **kw):
    return helpers.tiny_module(net, sde, sampler=PC(steps=5), **kw)


def labelled_loader(n=16):
    return image_loader(n, labels=3)


def fit(model, tmp_path, loader):
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=2, enable_checkpointing=False)
    trainer.fit(model, loader)
    return trainer


def test_class_embedding_is_off_by_default_and_adds_one_table_when_on():
    plain, conditional = tiny_net(), tiny_net(num_classes=3)
    extra = set(conditional.state_dict()) - set(plain.state_dict())
    assert extra == {"class_embed.weight"} and conditional.class_embed.weight.shape == (4, 32)
    assert plain.num_classes is None and not hasattr(plain, "class_embed")
    with pytest.raises(ValueError, match="num_classes needs conditional=True"):
        tiny_net(num_classes=3, conditional=False)


class LabelsSeen(Loss):
    """Records the labels bound to the model of each training batch; DSM on the first four images only
    (the labels are what is tested, and a full batch of them through the network would be slow)."""

    def __init__(self):
        self.seen = []

    def __call__(self, model, sde, x, *, generator=None):
        self.seen.append(model.labels.clone())
        return DSMLoss()(LabelledScore(model.model, model.labels[:4]), sde, x[:4], generator=generator)


def test_label_dropout_sends_labels_to_the_null_class_at_its_rate(tmp_path):
    loss = LabelsSeen()
    model = tiny_module(tiny_net(num_classes=3), label_dropout=0.3, loss=loss)
    n = 4096
    fit(model, tmp_path, image_loader(n, batch_size=n, labels=3, size=8))
    labels, seen = torch.arange(n) % 3, loss.seen[0]
    dropped = seen == 3
    assert abs(dropped.float().mean().item() - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5
    assert torch.equal(seen[~dropped], labels[~dropped])  # the kept labels are untouched
    with pytest.raises(ValueError, match="label_dropout must lie in"):
        tiny_module(tiny_net(num_classes=3), label_dropout=1.0)


def test_conditional_fit_checkpoint_and_sampling_by_seed_and_class(tmp_path):
    model = tiny_module(tiny_net(num_classes=3))
    trainer = fit(model, tmp_path, labelled_loader())
    assert model.net.class_embed.weight.grad is not None and model.net.class_embed.weight.abs().sum() > 0
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    loaded = ScoreModule.load_from_checkpoint(path, net=tiny_net(num_classes=3), sde=VESDE(0.01, 16.0, 100))
    guided = PC(steps=5, guidance_scale=2.0)
    a = loaded.generate_images([0, 1, 2, 3], guided, classes=[0, 1, 2, 0])
    b = torch.cat([loaded.generate_images([s], guided, classes=[c]) for s, c in zip([0, 1, 2, 3], [0, 1, 2, 0])])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    out = loaded.predict_step((torch.tensor([0, 1]), torch.tensor([2, 2])), 0)
    assert out["classes"].tolist() == [2, 2] and out["images"].shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="class 3 is out of range: the model has 3 classes"):
        loaded.generate_images([0], classes=[3])
    with pytest.raises(ValueError, match="batches carry no labels"):
        fit(tiny_module(tiny_net(num_classes=3)), tmp_path, DataLoader(TensorDataset(torch.rand(8, 1, 8, 8)),
                                                                        batch_size=4))


def test_checkpoint_without_labels_still_loads_and_samples(tmp_path):
    model = tiny_module(tiny_net())
    trainer = fit(model, tmp_path, labelled_loader())  # labels of a torchvision-style loader are ignored
    path = tmp_path / "u.ckpt"
    trainer.save_checkpoint(path)
    loaded = ScoreModule.load_from_checkpoint(path, net=tiny_net(), sde=VESDE(0.01, 16.0, 100))
    assert "net.class_embed.weight" not in loaded.state_dict() and loaded.num_classes is None
    torch.testing.assert_close(loaded.generate_images(2), model.generate_images(2))
    with pytest.raises(ValueError, match="not class-conditional"):
        loaded.generate_images([0], classes=[1])
    with pytest.raises(ValueError, match="no classes were given"):
        loaded.generate_images([0], PC(steps=5, guidance_scale=1.0))


def test_sampling_callback_draws_one_class_per_grid_row():
    from pds_lightning.sampling_callback import SamplingCallback

    # sigma_max 0.5 keeps samples inside [0, 1] (unclamped); random class embeddings and non-zero output
    # layers make the class visibly change the sample
    model = tiny_module(tiny_net(num_classes=3, sigma_max=0.5), VESDE(0.01, 0.5, 100))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.ema_net.class_embed.weight.copy_(torch.randn(4, 32, generator=g))
        for p in model.ema_net.parameters():  # the near-zero init_scale=0 layers pass nothing on
            if p.abs().max() < 1e-3:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    sampler = PC(name="s", steps=3, guidance_scale=1.0)
    callback = SamplingCallback([sampler], num_samples=8, grid_nrow=2, seed_offset=5)
    seeds = torch.arange(5, 13)
    assert callback.classes_for(model, seeds).tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
    images, nfe, _ = callback._sample(model, sampler, seeds)
    expected = model.sample(sampler, seeds, torch.tensor([0, 0, 1, 1, 2, 2, 0, 0])).x
    torch.testing.assert_close(images, expected.float())
    assert (images - model.sample(sampler, seeds, torch.zeros(8, dtype=torch.long)).x).abs().amax() > 1e-3
    assert callback.classes_for(tiny_module(tiny_net()), seeds) is None
