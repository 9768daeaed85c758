"""ScoreModule: EMA rule, validation with the averaged weights, checkpoint contents, training times, warm-up,
and the network's copies of the SDE's and the data's facts."""

import re

import lightning as L
import pytest
import torch

from helpers import TINY_SDE, VE_ARGS, VP_ARGS, image_loader as loader, score_sde_loss, tiny_module, tiny_net
from pds_lightning.losses import DSMLoss
from pds_lightning.models.score import ScoreModel
from pds_lightning.module import ScoreModule, ema_decay_at
from pds_lightning.sde import VESDE


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
            return DSMLoss()(ScoreModel(net.eval(), module.sde), module.sde, x, generator=g).item()

    assert logged == pytest.approx(loss_with(module.ema_net), rel=1e-5)
    assert abs(logged - loss_with(module.net)) > 1e-4


def test_fit_requires_continuous_models(tmp_path):
    module = tiny_module(continuous=False)
    with pytest.raises(ValueError, match="continuous"):
        trainer(tmp_path, max_steps=1).fit(module, train_dataloaders=loader())


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_training_times_start_at_score_sde_eps_for_every_sde(tmp_path, kind):
    """The module's loss (here the logged validation loss) draws t in [1e-5, 1], not the sampling eps."""
    from pds_lightning.sde import SubVPSDE, VPSDE

    sde = {"ve": VESDE(*VE_ARGS, 100), "vp": VPSDE(*VP_ARGS, 100), "subvp": SubVPSDE(*VP_ARGS, 100)}[kind]
    net = tiny_net(sigma_max=VE_ARGS[1], centered=kind != "ve", scale_by_sigma=kind == "ve",
                   embedding_type="fourier" if kind == "ve" else "positional")
    module = ScoreModule(net, sde, image_size=8, num_channels=1, centered=kind != "ve",
                         loss=DSMLoss(reduce_mean=False))
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
    with pytest.raises(ValueError, match="eps .*must lie in"):
        tiny_module(train_eps=0.0)


@pytest.mark.parametrize("net_args, sde, module_args, message", [
    ({"sigma_max": 50.0}, None, {}, "model.net sigma_max=50 contradicts model.sde sigma_max=16"),
    ({"sigma_min": 0.002}, None, {}, "model.net sigma_min=0.002 contradicts model.sde sigma_min=0.01"),
    ({"num_scales": 1000}, None, {}, "model.net num_scales=1000 contradicts model.sde num_scales=100"),
    ({"image_size": 16}, None, {"image_size": 8}, "model.net image_size=16 contradicts data.images.size=8"),
    ({}, None, {"num_channels": 3}, "model.net num_channels=1 contradicts data.images.num_channels=3"),
    ({}, None, {"centered": True}, "model.net centered=False contradicts data.images.centered=True"),
])
def test_a_fact_the_network_repeats_must_agree_with_its_home(net_args, sde, module_args, message):
    with pytest.raises(ValueError, match=message):
        tiny_module(tiny_net(**net_args), sde, **module_args)


def test_vp_networks_keep_their_own_noise_levels():
    """A VP SDE has no sigma range: the network's score_sde levels (0.01..50, 1000) are not compared with it."""
    from pds_lightning.sde import VPSDE

    net = tiny_net(sigma_max=50.0, num_scales=1000, centered=True, embedding_type="positional", scale_by_sigma=False)
    assert tiny_module(net, VPSDE(0.1, 20.0, 100), centered=True).sde.N == 100


def test_shipped_configs_give_each_fact_once_or_agree(tmp_path):
    """Every shipped config builds without a contradiction at its full size (the check reads the network's
    sigmas buffer; the networks are built on the meta device, so no weights are allocated)."""
    import yaml
    from pathlib import Path

    from pds_lightning.classpath import instantiate
    from pds_lightning.module import net_contradiction
    from pds_lightning.sde import SDE

    configs = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert len(configs) >= 13
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        data = cfg["data"]
        with torch.device("meta"):
            net = instantiate(cfg["model"]["net"], "model.net", torch.nn.Module)
        spec = cfg["model"]["net"]
        spec = spec["init_args"].get("net", spec)  # EDMPrecond: the wrapped network's own levels
        net.sigmas = tiny_net(**{k: spec["init_args"][k] for k in ("sigma_min", "sigma_max", "num_scales")}).sigmas
        sde = instantiate(cfg["model"]["sde"], "model.sde", SDE)
        images = data["images"]
        assert net_contradiction(net, sde, images["size"], images.get("num_channels", 3),
                                 images.get("centered", False)) is None, path.name


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
    lr = module.optimizer.lr
    expected = [lr * min(n / warmup, 1.0) if warmup > 0 else lr for n in range(6)]
    assert rec.used == pytest.approx(expected, rel=1e-12, abs=0)


def test_nan_weights_are_named_when_loaded_and_before_sampling(tmp_path):
    """Issue 31 item 5: a checkpoint with NaN weights loaded, and generate_images returned NaN images."""
    model = tiny_module()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["ema_net.all_modules.3.bias"][:2] = float("nan")
    state["ema_net.all_modules.3.bias"][2] = float("inf")
    torch.save({"state_dict": state, "hyper_parameters": {}}, tmp_path / "nan.ckpt")
    fix = ("; a model with non-finite weights samples and trains only NaN: use an earlier checkpoint (one saved before "
           "the loss became non-finite)")
    with pytest.raises(ValueError, match=re.escape(f"checkpoint {tmp_path / 'nan.ckpt'}: parameter "
                                                   f"ema_net.all_modules.3.bias holds 2 NaN values and 1 Inf value{fix}")):
        ScoreModule.load_from_checkpoint(tmp_path / "nan.ckpt", net=tiny_net(), sde=VESDE(**TINY_SDE))
    with torch.no_grad():  # weights that turn NaN in this process (e.g. a diverged training loop)
        model.ema_net.all_modules[3].bias[0] = float("nan")
    with pytest.raises(ValueError, match=re.escape(f"ScoreModule: parameter ema_net.all_modules.3.bias holds 1 NaN "
                                                   f"value{fix}")):
        model.generate_images(2)


def test_old_flat_optimizer_keys_become_one_model_optimizer():
    """lr / beta1 / adam_eps / weight_decay / warmup / grad_clip of older configs become model.optimizer once (an
    Adam with beta2 0.999), stored as that component only, and the optimizer fit builds is that Adam."""
    module = tiny_module(lr=1e-3, beta1=0.5, adam_eps=1e-6, weight_decay=0.25, warmup=3, grad_clip=0.5)
    assert module.hparams["optimizer"] == {
        "class_path": "pds_lightning.optim.Adam",
        "init_args": {"lr": 1e-3, "betas": [0.5, 0.999], "eps": 1e-6, "weight_decay": 0.25, "warmup": 3,
                      "grad_clip": 0.5}}
    assert not {"lr", "beta1", "adam_eps", "weight_decay", "warmup", "grad_clip"} & set(module.hparams)
    adam = module.configure_optimizers()
    assert type(adam) is torch.optim.Adam
    assert {k: adam.defaults[k] for k in ("lr", "betas", "eps", "weight_decay")} == {
        "lr": 1e-3, "betas": (0.5, 0.999), "eps": 1e-6, "weight_decay": 0.25}


def test_model_optimizer_sets_beta2_and_contradicting_flat_keys_are_refused():
    from pds_lightning.optim import Adam

    module = ScoreModule.from_hyper_parameters(
        tiny_net(), VESDE(**TINY_SDE), image_size=8, num_channels=1,
        optimizer={"class_path": "pds_lightning.optim.Adam", "init_args": {"lr": 0.01, "betas": [0.9, 0.99]}})
    assert module.configure_optimizers().defaults["betas"] == (0.9, 0.99)
    assert [module.optimizer.lr_at(n) for n in (0, 2500, 5000, 9000)] == [0.0, 0.005, 0.01, 0.01]
    with pytest.raises(ValueError, match=r"^model.beta1=0.5 contradicts model.optimizer betas=\[0.9, 0.999\]; remove "
                                         r"model.beta1 and set model.optimizer.init_args.betas$"):
        tiny_module(optimizer=Adam(), beta1=0.5, lr=None, warmup=None)
    with pytest.raises(ValueError, match=r"^Adam betas must be two numbers in \[0, 1\)"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"^Adam lr must be a finite number >= 0, got nan$"):
        Adam(lr=float("nan"))
