"""ScoreModule: EMA rule, validation with the averaged weights, checkpoint contents, DSM loss minimum."""

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
    kw = {"lr": 1e-2, "warmup": 1, **kw}
    net = NCSNpp(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, sigma_max=16.0,
                 num_scales=100, image_size=8, num_channels=1)
    return ScoreModule(net, VESDE(0.01, 16.0, 100), image_size=8, num_channels=1, **kw)


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


# ---- parity with score_sde's training (losses.py get_sde_loss_fn / optimization_manager) -------------------
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


def toy_score(x, t):
    """Some non-trivial score (not the exact one), so that every term of the loss matters."""
    return -(x - 0.3) / (0.2 + t[:, None, None, None]) + 0.1 * torch.sin(3 * x)


@pytest.mark.parametrize("kind", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("likelihood_weighting", [True, False])
def test_dsm_loss_equals_score_sde_formula(kind, reduce_mean, likelihood_weighting):
    from pds_lightning.module import TRAIN_EPS
    from pds_lightning.sde import SubVPSDE, VPSDE

    sde = {"ve": lambda: VESDE(*VE_ARGS, 1000), "vp": lambda: VPSDE(*VP_ARGS, 1000),
           "subvp": lambda: SubVPSDE(*VP_ARGS, 1000)}[kind]()
    x = torch.rand(6, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = dsm_loss(toy_score, sde, x, reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting,
                    generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # score_sde's draws in its order: t, then z
    t = torch.rand(6, generator=g, dtype=torch.float64) * (1 - 1e-5) + 1e-5
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    expected = score_sde_loss(toy_score, kind, x, t, z, reduce_mean, likelihood_weighting)
    assert TRAIN_EPS == 1e-5
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_training_times_start_at_score_sde_eps_for_every_sde(tmp_path, kind):
    """The module's loss (here the logged validation loss) draws t in [1e-5, 1], not the sampling eps."""
    from pds_lightning.sde import SubVPSDE, VPSDE

    sde = {"ve": VESDE(*VE_ARGS, 100), "vp": VPSDE(*VP_ARGS, 100), "subvp": SubVPSDE(*VP_ARGS, 100)}[kind]
    net = NCSNpp(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, sigma_max=VE_ARGS[1],
                 num_scales=100, image_size=8, num_channels=1, centered=kind != "ve",
                 scale_by_sigma=kind == "ve", embedding_type="fourier" if kind == "ve" else "positional")
    module = ScoreModule(net, sde, image_size=8, num_channels=1, reduce_mean=False)
    assert module.train_eps == 1e-5
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # away from the zero-initialised output layer, so the loss depends on t
        for p in module.ema_net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    x = next(iter(loader(4)))[0]
    logged = trainer(tmp_path).validate(module, dataloaders=loader(4), verbose=False)[0]["val/loss"]

    def reference(eps):
        g = torch.Generator().manual_seed(0)  # validation batch 0's fixed draws
        t = torch.rand(4, generator=g) * (1 - eps) + eps
        z = torch.randn(x.shape, generator=g)
        with torch.no_grad():
            return score_sde_loss(module.score_fn(ema=True).eval(), kind, x, t, z,
                                  False, False).item()

    assert logged == pytest.approx(reference(1e-5), rel=1e-4)
    if kind != "ve":
        assert abs(logged / reference(1e-3) - 1) > 1e-3  # the old default (the sampling eps) differs


def test_train_eps_outside_the_time_range_is_refused():
    with pytest.raises(ValueError, match="train_eps"):
        tiny_module(train_eps=0.0)


class RecordLR(L.Callback):
    """The rate each optimizer update uses (read after the step, before the module sets the next one)."""

    def __init__(self):
        self.used = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.used.append(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("warmup", [4, 0])
def test_learning_rate_warmup_matches_score_sde(tmp_path, warmup):
    """score_sde: update number n (from 0) uses lr * min(n / warmup, 1); the first update has rate 0."""
    torch.manual_seed(0)
    module = tiny_module(warmup=warmup)
    rec = RecordLR()
    trainer(tmp_path, max_steps=6, callbacks=[rec], enable_checkpointing=False, limit_val_batches=0).fit(
        module, train_dataloaders=loader(24))
    lr = module.hparams.lr
    expected = [lr * min(n / warmup, 1.0) if warmup > 0 else lr for n in range(6)]
    assert rec.used == pytest.approx(expected, rel=1e-12, abs=0)
