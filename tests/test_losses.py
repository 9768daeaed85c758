"""Loss components: score_sde's DSM loss in all 12 modes, its analytic minimum, how a loss is stored and
rebuilt, the old module arguments it replaces, and the label binding a loss sees."""

import pytest
import torch
import yaml

from helpers import VE_ARGS, VP_ARGS, score_sde_loss, tiny_module
from pds_lightning.classpath import instantiate, spec_of
from pds_lightning.losses import TRAIN_EPS, DSMLoss, Loss
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.models.score import LabelledScore
from pds_lightning.module import ScoreModule
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_dsm_loss_of_exact_score_is_analytic_minimum(sde_name):
    """With the exact score of a Gaussian image model, DSM loss = E_t mean_k a^2 lam / (a^2 lam + s^2)."""
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

    loss = DSMLoss(eps=eps)(target, sde, x, generator=torch.Generator().manual_seed(2)).item()
    assert loss == pytest.approx(expected, rel=0.04)  # MC error ~1%
    wrong = DSMLoss(eps=eps)(lambda xt, tt: 1.3 * target(xt, tt), sde, x,
                     generator=torch.Generator().manual_seed(2)).item()
    assert wrong > loss * 1.05


def toy_score(x, t):
    """Some non-trivial score (not the exact one), so that every term of the loss matters."""
    return -(x - 0.3) / (0.2 + t[:, None, None, None]) + 0.1 * torch.sin(3 * x)


@pytest.mark.parametrize("kind", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("reduce_mean", [True, False])
@pytest.mark.parametrize("likelihood_weighting", [True, False])
def test_dsm_loss_equals_score_sde_formula(kind, reduce_mean, likelihood_weighting):
    sde = {"ve": lambda: VESDE(*VE_ARGS, 1000), "vp": lambda: VPSDE(*VP_ARGS, 1000),
           "subvp": lambda: SubVPSDE(*VP_ARGS, 1000)}[kind]()
    x = torch.rand(6, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = DSMLoss(reduce_mean, likelihood_weighting)(toy_score, sde, x, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)  # score_sde's draws in its order: t, then z
    t = torch.rand(6, generator=g, dtype=torch.float64) * (1 - 1e-5) + 1e-5
    z = torch.randn(x.shape, generator=g, dtype=torch.float64)
    expected = score_sde_loss(toy_score, kind, x, t, z, reduce_mean, likelihood_weighting)
    assert TRAIN_EPS == 1e-5
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)




def test_dsm_loss_is_stored_as_plain_data_and_rebuilt():
    loss = DSMLoss(reduce_mean=False, likelihood_weighting=True, eps=1e-4)
    spec = spec_of(loss)
    assert spec == {"class_path": "pds_lightning.losses.DSMLoss",
                    "init_args": {"reduce_mean": False, "likelihood_weighting": True, "eps": 1e-4}}
    rebuilt = instantiate(spec, "model.loss", Loss)
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rebuilt(toy_score, VESDE(), x, generator=torch.Generator().manual_seed(1)),
                               loss(toy_score, VESDE(), x, generator=torch.Generator().manual_seed(1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="eps .* must lie in \\(0, 1\\)"):
        DSMLoss(eps=0.0)


def test_the_old_module_arguments_become_the_loss_once():
    module = tiny_module(reduce_mean=False, likelihood_weighting=True, train_eps=1e-3)
    assert spec_of(module.loss)["init_args"] == {"reduce_mean": False, "likelihood_weighting": True, "eps": 1e-3}
    assert module.hparams["loss"] == spec_of(module.loss)  # recorded once, as plain data
    assert not {"reduce_mean", "likelihood_weighting", "train_eps"} & set(module.hparams)
    assert spec_of(tiny_module().loss) == spec_of(DSMLoss())  # no loss given: score_sde's defaults
    # the same value twice is no contradiction; a different one, or a loss with no such argument, is refused
    assert tiny_module(loss=DSMLoss(reduce_mean=False), reduce_mean=False).loss.reduce_mean is False
    with pytest.raises(ValueError, match="model.reduce_mean=False contradicts model.loss reduce_mean=True"):
        tiny_module(loss=DSMLoss(), reduce_mean=False)
    with pytest.raises(ValueError, match="model.train_eps configure DSMLoss but model.loss is NegatedLoss"):
        tiny_module(loss=NegatedLoss(), train_eps=1e-5)


class NegatedLoss(Loss):
    """A loss that is not DSMLoss (minus DSM's value): the module trains with whatever it is given."""

    def __call__(self, model, sde, x, *, generator=None):
        return -DSMLoss()(model, sde, x, generator=generator)


def test_an_old_checkpoint_with_dsm_arguments_loads_with_that_loss(tmp_path):
    module = tiny_module()
    module.set_class_specs(spec_of_net(), {"class_path": "pds_lightning.sde.VESDE",
                                           "init_args": {"sigma_min": 0.01, "sigma_max": 16.0, "num_scales": 100}})
    old = {k: v for k, v in module.hparams.items() if k != "loss"}
    old.update(reduce_mean=False, likelihood_weighting=False, train_eps=None)  # train_eps None: older checkpoints
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": old}, path)
    loaded = ScoreModule.load_from_checkpoint(path)
    assert spec_of(loaded.loss)["init_args"] == {"reduce_mean": False, "likelihood_weighting": False, "eps": TRAIN_EPS}
    assert loaded.hparams["loss"]["init_args"]["reduce_mean"] is False and "reduce_mean" not in loaded.hparams
    with pytest.raises(ValueError, match="model.reduce_mean=False contradicts"):
        ScoreModule.load_from_checkpoint(path, loss=DSMLoss(reduce_mean=True))


def spec_of_net():
    return {"class_path": "pds_lightning.models.NCSNpp",
            "init_args": dict(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, image_size=8,
                              num_channels=1, sigma_min=0.01, sigma_max=16.0, num_scales=100)}


def test_the_loss_is_chosen_by_class_path_in_yaml(tmp_path, capsys):
    from pds_lightning.cli import cli_main

    config = tmp_path / "loss.yaml"
    config.write_text(yaml.safe_dump({"model": {"loss": {"class_path": "pds_lightning.losses.DSMLoss",
                                                         "init_args": {"reduce_mean": False, "eps": 1e-4}}}}))
    tiny = str(__import__("pathlib").Path(__file__).parent / "configs" / "tiny.yaml")
    cli = cli_main(["--config", tiny, "--config", str(config), "--trainer.logger", "false"], run=False)
    assert spec_of(cli.model.loss)["init_args"] == {"reduce_mean": False, "likelihood_weighting": False, "eps": 1e-4}
    # an older config's module keys still parse and become the loss
    old = cli_main(["--config", tiny, "--model.reduce_mean", "false", "--model.train_eps", "1e-3",
                    "--trainer.logger", "false"], run=False).model
    assert spec_of(old.loss)["init_args"] == {"reduce_mean": False, "likelihood_weighting": False, "eps": 1e-3}
    with pytest.raises(SystemExit):  # a key the loss does not have is a parse error naming it
        cli_main(["--config", tiny, "--model.loss", "pds_lightning.losses.DSMLoss", "--model.loss.init_args.sigma_data",
                  "0.5", "--trainer.logger", "false"], run=False)
    assert "Option 'sigma_data' is not accepted" in capsys.readouterr().err


class LabelNet(torch.nn.Module):
    """A stand-in score model whose outputs carry the labels they were given (the wrapper's only job)."""

    def forward(self, x, t, class_labels=None):
        return x + t[:, None, None, None] + class_labels[:, None, None, None]

    def denoise(self, x, sigma, class_labels=None):
        return x * sigma[:, None, None, None] + class_labels[:, None, None, None]


def test_bound_labels_reach_both_the_score_and_the_denoiser():
    labels, x, t = torch.tensor([1.0, 2.0]), torch.zeros(2, 1, 2, 2), torch.tensor([0.5, 0.25])
    bound = LabelledScore(LabelNet(), labels)
    torch.testing.assert_close(bound(x, t)[:, 0, 0, 0], torch.tensor([1.5, 2.25]))
    torch.testing.assert_close(bound.denoise(x + 1, t)[:, 0, 0, 0], torch.tensor([1.5, 2.25]))
