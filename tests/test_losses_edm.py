"""EDMLoss (losses.py): its formula on a fixed generator, its optimum on an exact Gaussian target, a short fit of a
tiny EDMPrecond(NCSN++), and the models it refuses."""

import math

import pytest
import torch
from torch import nn

from pds_lightning.losses import EDMLoss
from pds_lightning.models import NCSNpp, ScoreModel
from pds_lightning.models.edm import EDMPrecond
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sde import VESDE, VPSDE


class LinearDenoiser(nn.Module):
    """D(y; sigma) = a y / (1 + sigma): simple enough to write the loss out by hand."""

    is_denoiser = True

    def __init__(self, a=0.8):
        super().__init__()
        self.a = a

    def forward(self, y, sigma):
        return self.a * y / (1 + sigma.reshape(-1, 1, 1, 1))


def test_loss_equals_its_formula():
    x = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64).reshape(2, 1, 1, 2)
    loss = EDMLoss(P_mean=-1.0, P_std=0.5, sigma_data=0.4)(ScoreModel(LinearDenoiser(), VESDE()), VESDE(), x,
                                                            generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the same draws, in the loss's order: B sigmas, then the noise
    z = torch.randn(2, dtype=torch.float64, generator=g).tolist()
    n = torch.randn(2, 1, 1, 2, dtype=torch.float64, generator=g).flatten().tolist()
    total = 0.0
    for b in range(2):
        sigma = math.exp(-1.0 + 0.5 * z[b])
        weight = (sigma ** 2 + 0.16) / (sigma * 0.4) ** 2
        pixels = x[b].flatten().tolist()
        errors = [(0.8 * (p + sigma * n[2 * b + i]) / (1 + sigma) - p) ** 2 for i, p in enumerate(pixels)]
        total += weight * sum(errors) / 2  # mean over the 2 pixels
    assert loss.item() == pytest.approx(total / 2, rel=1e-12)  # then over the batch


class PosteriorMean(nn.Module):
    """The Gaussian target's optimal denoiser, with its gain scaled by `scale` (1: the optimum)."""

    is_denoiser = True

    def __init__(self, mean, lam, scale=1.0):
        super().__init__()
        self.mean, self.lam, self.scale = mean, lam, scale

    def forward(self, y, sigma):
        gain = self.scale * self.lam / (self.lam + sigma.reshape(-1, 1, 1, 1) ** 2)
        return self.mean + torch.fft.ifft2(gain * torch.fft.fft2(y - self.mean)).real


@pytest.mark.parametrize("sde", [VESDE(0.01, 50.0), VPSDE()], ids=["VE", "VP"])
def test_the_posterior_mean_minimises_the_loss_and_its_score_is_exact(sde):
    lam = power_law_spectrum(8, 8, variance=0.05)
    target = GaussianScore(0.4, lam, sde)
    x = target.sample(2048, generator=torch.Generator().manual_seed(0))
    losses = {scale: EDMLoss(sigma_data=0.5)(ScoreModel(PosteriorMean(0.4, lam, scale), sde), sde, x,
                               generator=torch.Generator().manual_seed(1)).item() for scale in (0.9, 1.0, 1.1)}
    assert losses[1.0] < min(losses[0.9], losses[1.1]), losses
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    y = target.sample(3, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ScoreModel(PosteriorMean(0.4, lam), sde)(y, t), target(y, t), rtol=1e-9, atol=1e-9)


def test_a_short_fit_of_a_tiny_edm_network_lowers_the_loss():
    torch.manual_seed(0)
    sde = VESDE(0.01, 16.0)
    data = GaussianScore(0.0, power_law_spectrum(8, 8, variance=0.25), sde)
    net = EDMPrecond(NCSNpp(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0, image_size=8,
                            num_channels=1, centered=True, scale_by_sigma=False, init_scale=1.0))
    model, loss_fn = ScoreModel(net, sde), EDMLoss()
    held_out = data.sample(256, generator=torch.Generator().manual_seed(1)).float()

    def held_out_loss():
        with torch.no_grad():
            return loss_fn(model, sde, held_out, generator=torch.Generator().manual_seed(2)).item()

    before = held_out_loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(30):
        loss = loss_fn(model, sde, data.sample(16, generator=torch.Generator().manual_seed(100 + step)).float(),
                       generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < 0.85 * before, (before, after)


def test_models_without_a_denoiser_and_bad_settings_are_refused():
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="no denoise"):
        EDMLoss()(GaussianScore(0.0, power_law_spectrum(8, 8), VESDE()), VESDE(), x)
    score_net = NCSNpp(nf=8, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], image_size=8, num_channels=1)
    with pytest.raises(ValueError, match="wrap model.net in pds_lightning.models.edm.EDMPrecond"):
        EDMLoss()(ScoreModel(score_net, VESDE()), VESDE(), x)
    with pytest.raises(ValueError, match="P_std > 0"):
        EDMLoss(P_std=0.0)
    with pytest.raises(ValueError, match="sigma_data > 0"):
        EDMLoss(sigma_data=-1.0)


def test_sigma_data_has_one_home_the_network():
    """Unset, the loss weights with the network's sigma_data; a different one given to the loss is refused."""
    net = EDMPrecond({"class_path": "pds_lightning.models.NCSNpp",
                      "init_args": {"nf": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [],
                                    "image_size": 8, "num_channels": 1, "centered": True, "scale_by_sigma": False}},
                     sigma_data=0.3)
    model, x = ScoreModel(net, VESDE()), torch.rand(2, 1, 8, 8)
    same = [EDMLoss(sigma_data=s)(model, VESDE(), x, generator=torch.Generator().manual_seed(0)) for s in (None, 0.3)]
    assert torch.equal(same[0], same[1])
    with pytest.raises(ValueError, match="contradicts the network's sigma_data=0.3"):
        EDMLoss(sigma_data=0.5)(model, VESDE(), x)
    with pytest.raises(ValueError, match="set model.loss.init_args.sigma_data"):
        EDMLoss()(ScoreModel(LinearDenoiser(), VESDE()), VESDE(), x)
