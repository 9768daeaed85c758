"""ScoreModule: EMA rule, validation with the averaged weights, checkpoint contents, DSM loss minimum."""

import copy
import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pds_lightning.models import NCSNpp
from pds_lightning.models.score import ScoreModel
from pds_lightning.module import ScoreModule, dsm_loss, ema_decay_at
from pds_lightning.sde import VESDE


def tiny_module(**kw):
    net = NCSNpp(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, sigma_max=16.0,
                 num_scales=100, image_size=8, num_channels=1)
    return ScoreModule(net, VESDE(0.01, 16.0, 100), image_size=8, num_channels=1, lr=1e-2, warmup=1, **kw)


def loader(n=16):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.rand(n, 1, 8, 8, generator=g)), batch_size=4)


class RecordParams(L.Callback):
    def __init__(self):
        self.history = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history.append([p.detach().clone() for p in pl_module.net.parameters()])


def trainer(tmp_path, **kw):
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def test_ema_decay_warmup_rule():
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 10**6) == 0.999


def test_ema_weights_follow_score_sde_rule_and_are_checkpointed(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(ema_decay=0.9)
    ema = [p.detach().clone() for p in module.net.parameters()]
    rec = RecordParams()
    t = trainer(tmp_path, max_steps=4, callbacks=[rec], enable_checkpointing=False, limit_val_batches=0)
    t.fit(module, train_dataloaders=loader())
    for n, params in enumerate(rec.history, start=1):
        d = ema_decay_at(0.9, n)
        ema = [d * e + (1 - d) * p for e, p in zip(ema, params)]
    assert int(module.ema_num_updates) == 4
    for e, p_ema, p in zip(ema, module.ema_net.parameters(), module.net.parameters()):
        torch.testing.assert_close(p_ema, e, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(p_ema, p) for p_ema, p in zip(module.ema_net.parameters(), module.net.parameters()))
    ckpt_path = tmp_path / "m.ckpt"
    t.save_checkpoint(ckpt_path)
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    for (name, p_ema), e in zip(module.ema_net.named_parameters(), ema):
        torch.testing.assert_close(state[f"ema_net.{name}"], e, rtol=1e-5, atol=1e-6)


def test_validation_uses_ema_weights(tmp_path):
    torch.manual_seed(0)
    module = tiny_module(ema_decay=0.99)
    t = trainer(tmp_path, max_steps=3, enable_checkpointing=False, limit_val_batches=0)
    t.fit(module, train_dataloaders=loader())
    val = loader(4)
    logged = trainer(tmp_path).validate(module, dataloaders=val, verbose=False)[0]["val/loss"]
    x = next(iter(val))[0]

    def loss_with(net):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return dsm_loss(ScoreModel(net.eval(), module.sde), module.sde, x, module.train_eps, generator=g).item()

    assert logged == pytest.approx(loss_with(module.ema_net), rel=1e-5)
    assert abs(logged - loss_with(module.net)) > 1e-4


def test_fit_requires_continuous_models(tmp_path):
    module = tiny_module(continuous=False)
    with pytest.raises(ValueError, match="continuous"):
        trainer(tmp_path, max_steps=1).fit(module, train_dataloaders=loader())


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_dsm_loss_of_exact_score_is_analytic_minimum(sde_name):
    """With the exact score of a Gaussian image model, DSM loss = E_t mean_k a^2 lam / (a^2 lam + s^2)."""
    from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
    from pds_lightning.sde import VPSDE

    sde = VESDE(0.01, 5.0, 1000) if sde_name == "ve" else VPSDE(0.1, 20.0, 1000)
    lam = power_law_spectrum(8, 8, variance=0.05)
    target = GaussianScore(0.4, lam, sde)
    eps = sde.default_eps
    x = target.sample(131072, generator=torch.Generator().manual_seed(1)).float()

    t = torch.linspace(eps, 1.0, 4001, dtype=torch.float64)
    ones = torch.ones(t.numel(), 1, 1, 1, dtype=torch.float64)
    a, s = sde.marginal_prob(ones, t)
    a, s = a.flatten()[:, None, None, None], s[:, None, None, None]
    per_t = (a ** 2 * lam / (a ** 2 * lam + s ** 2)).mean(dim=(1, 2, 3))
    expected = torch.trapezoid(per_t, t).item() / (1.0 - eps)

    loss = dsm_loss(target, sde, x, eps, generator=torch.Generator().manual_seed(2)).item()
    assert loss == pytest.approx(expected, rel=0.04)  # MC error ~1%
    wrong = dsm_loss(lambda xt, tt: 1.3 * target(xt, tt), sde, x, eps,
                     generator=torch.Generator().manual_seed(2)).item()
    assert wrong > loss * 1.05
