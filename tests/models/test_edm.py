"""EDM preconditioning (models/edm.py) and the score ScoreModel makes of a denoiser, against hand values and the
exact score of a Gaussian target."""

import math

import pytest
import torch
from torch import nn

from pds_lightning.models import DDPMpp, NCSNpp, ScoreModel
from pds_lightning.models.edm import EDMPrecond, preconditioning
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import EDMHeun
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

TINY = dict(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, image_size=8, num_channels=1,
            centered=True, scale_by_sigma=False)
SPEC = {"class_path": "pds_lightning.models.NCSNpp", "init_args": TINY}


class RecordingNet(nn.Module):
    """F(x, labels) = 3 x + labels, remembering its inputs; an EDM-ready network (no sigma division, centered)."""

    scale_by_sigma, centered = False, True

    def __init__(self, embedding_type="positional"):
        super().__init__()
        self.embedding_type = embedding_type

    def forward(self, x, labels):
        self.x, self.labels = x, labels
        return 3 * x + labels.reshape(-1, 1, 1, 1)


def test_preconditioning_at_hand_computed_sigmas():
    # sigma = sd = 0.5: s^2 + sd^2 = 0.5; sigma = 2: 4.25.
    c_skip, c_out, c_in, c_noise = preconditioning(torch.tensor([0.5, 2.0], dtype=torch.float64), 0.5)
    torch.testing.assert_close(c_skip, torch.tensor([0.5, 0.25 / 4.25], dtype=torch.float64))
    torch.testing.assert_close(c_out, torch.tensor([0.25 / math.sqrt(0.5), 1 / math.sqrt(4.25)], dtype=torch.float64))
    torch.testing.assert_close(c_in, torch.tensor([math.sqrt(2), 1 / math.sqrt(4.25)], dtype=torch.float64))
    torch.testing.assert_close(c_noise, torch.tensor([-0.17328679514, 0.17328679514], dtype=torch.float64))


@pytest.mark.parametrize("embedding", ["positional", "fourier"])
def test_denoiser_is_c_skip_x_plus_c_out_F(embedding):
    net = RecordingNet(embedding)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    sigma = torch.tensor([0.5, 2.0], dtype=torch.float64)
    d = EDMPrecond(net, sigma_data=0.5)(x, sigma)
    c_in = torch.tensor([math.sqrt(2), 1 / math.sqrt(4.25)], dtype=torch.float64)
    c_noise = torch.tensor([math.log(0.5) / 4, math.log(2) / 4], dtype=torch.float64)
    labels = c_noise.exp() if embedding == "fourier" else c_noise  # Fourier embeds log(labels) = c_noise
    torch.testing.assert_close(net.x.flatten(), c_in * x.flatten())
    torch.testing.assert_close(net.labels, labels)
    expected = [0.5 * 1 + 0.25 / math.sqrt(0.5) * (3 * math.sqrt(2) * 1 + labels[0].item()),
                0.25 / 4.25 * -2 + 1 / math.sqrt(4.25) * (3 * -2 / math.sqrt(4.25) + labels[1].item())]
    torch.testing.assert_close(d.flatten(), torch.tensor(expected, dtype=torch.float64))
    # a scalar sigma is every sample's
    torch.testing.assert_close(EDMPrecond(net)(x, 2.0), EDMPrecond(net)(x, torch.tensor([2.0, 2.0])))


def test_ncsnpp_fourier_and_ddpmpp_positional_embeddings_see_c_noise():
    sigma = torch.tensor([0.02, 1.0, 30.0])
    c_noise = sigma.log() / 4
    ncsnpp = EDMPrecond(SPEC)
    seen = {}
    ncsnpp.net.all_modules[0].register_forward_hook(lambda m, args, out: seen.update(fourier=args[0]))
    ncsnpp(torch.randn(3, 1, 8, 8), sigma)
    torch.testing.assert_close(seen["fourier"], c_noise)  # GaussianFourierProjection's input: log(labels)
    ddpmpp = EDMPrecond(DDPMpp(**{**TINY}))
    ddpmpp.net.all_modules[0].register_forward_hook(lambda m, args, out: seen.update(positional=args[0]))
    ddpmpp(torch.randn(3, 1, 8, 8), sigma)
    from pds_lightning.models.layers import timestep_embedding
    torch.testing.assert_close(seen["positional"], timestep_embedding(c_noise, 8))


def test_class_labels_reach_a_conditional_network():
    net = EDMPrecond(DDPMpp(**TINY, num_classes=3))
    with torch.no_grad():  # the last conv starts at zero (init_scale 0): F would ignore everything
        for p in net.parameters():
            p.normal_(0, 0.2, generator=torch.Generator().manual_seed(p.numel()))
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.7, 0.7])
    a, b = net(x, sigma, torch.tensor([0, 1])), net(x, sigma, torch.tensor([2, 2]))
    assert net.num_classes == 3 and not torch.allclose(a, b)
    c_skip, c_out, c_in, c_noise = (c.reshape(-1, 1, 1, 1) for c in preconditioning(sigma, 0.5))
    F = net.net(c_in * x, c_noise.flatten(), class_labels=torch.tensor([0, 1]))
    torch.testing.assert_close(a, c_skip * x + c_out * F)


def test_scores_and_denoisers_with_bound_labels_are_the_labelled_calls():
    net = EDMPrecond(DDPMpp(**TINY, num_classes=3))
    with torch.no_grad():
        nn.init.normal_(net.net.class_embed.weight)
        net.net.all_modules[-1].weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    model, labels = ScoreModel(net, VPSDE()), torch.tensor([2, 0])
    x, t, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.6]), torch.tensor([0.5, 3.0])
    bound = model.with_labels(labels)
    torch.testing.assert_close(bound(x, t), model(x, t, labels))
    torch.testing.assert_close(bound.denoise(x, sigma), net(x, sigma, labels))
    assert not torch.allclose(bound.denoise(x, sigma), model.with_labels(None).denoise(x, sigma))


def test_bad_networks_and_settings_are_refused():
    with pytest.raises(ValueError, match="scale_by_sigma: false"):
        EDMPrecond({"class_path": "pds_lightning.models.NCSNpp", "init_args": {**TINY, "scale_by_sigma": True}})
    with pytest.raises(ValueError, match="centered: true"):
        EDMPrecond({"class_path": "pds_lightning.models.NCSNpp", "init_args": {**TINY, "centered": False}})
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        EDMPrecond(SPEC, sigma_data=0.0)
    with pytest.raises(ValueError, match="refused model.net.init_args.net 'os.system'"):
        EDMPrecond({"class_path": "os.system", "init_args": {}})
    with pytest.raises(ValueError, match="use continuous=True"):
        ScoreModel(EDMPrecond(SPEC), VESDE(), continuous=False)
    with pytest.raises(ValueError, match="wrap model.net in pds_lightning.models.edm.EDMPrecond"):
        ScoreModel(NCSNpp(**TINY), VESDE()).denoise(torch.zeros(1, 1, 8, 8), 1.0)


# ---- the score of a denoiser: the Gaussian posterior mean gives the exact score ------------------------------
class PosteriorMean(nn.Module):
    """The optimal denoiser of x0 ~ N(mean, F^-1 diag(lam) F): mean + F^-1[lam / (lam + sigma^2) F(y - mean)]."""

    is_denoiser = True

    def __init__(self, mean, lam):
        super().__init__()
        self.mean, self.lam = mean, lam

    def forward(self, y, sigma):
        gain = self.lam / (self.lam + sigma.reshape(-1, 1, 1, 1) ** 2)
        return self.mean + torch.fft.ifft2(gain * torch.fft.fft2(y - self.mean)).real


@pytest.mark.parametrize("sde", [VESDE(0.01, 50.0), VPSDE(), SubVPSDE()], ids=["VE", "VP", "subVP"])
def test_posterior_mean_denoiser_gives_the_exact_score(sde):
    lam = power_law_spectrum(8, 8, variance=0.05)
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    score = ScoreModel(PosteriorMean(0.3, lam), sde)(x, t)
    # sub-VP's std 1 - exp(2 lmc) in GaussianScore cancels at small t: 1e-8 relative
    torch.testing.assert_close(score, GaussianScore(0.3, lam, sde)(x, t), rtol=1e-7, atol=1e-9)


# ---- a ScoreModule around EDMPrecond: built from its class paths, checkpoint round trip, sampling ----------
def test_score_module_builds_saves_loads_and_samples(tmp_path):
    sde_spec = {"class_path": "pds_lightning.sde.VESDE", "init_args": {"sigma_min": 0.01, "sigma_max": 16.0}}
    net_spec = {"class_path": "pds_lightning.models.edm.EDMPrecond", "init_args": {"net": SPEC, "sigma_data": 0.5}}
    settings = EDMHeun(name="heun", steps=3)
    module = ScoreModule.from_hyper_parameters(net=net_spec, sde=sde_spec, image_size=8, num_channels=1,
                                               centered=True, sampler=settings)
    with torch.no_grad():
        for p in module.ema_net.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    images = module.generate_images(2)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    path = tmp_path / "edm.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    loaded = ScoreModule.load_from_checkpoint(path)
    assert isinstance(loaded.ema_net, EDMPrecond) and loaded.hparams["net"] == net_spec
    torch.testing.assert_close(loaded.generate_images(2), images)
