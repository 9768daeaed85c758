"""ScoreModel: what the network is fed and how its output becomes a score (score_sde conventions)."""

import math

import pytest
import torch
from torch import nn

from pds_lightning.models import NCSNpp, ScoreModel
from pds_lightning.models.presets import tiny
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE


class RecordingNet(nn.Module):
    """Returns x + labels (broadcast) and remembers the labels it was given."""

    def forward(self, x, labels):
        self.labels = labels
        return x + labels.to(x.dtype).reshape(-1, 1, 1, 1)


X = torch.randn(3, 2, 4, 4)
T = torch.tensor([1e-3, 0.4, 1.0])


def vp_log_mean_coeff(t, beta_0=0.1, beta_1=20.0):
    return -0.25 * t ** 2 * (beta_1 - beta_0) - 0.5 * t * beta_0


def test_ve_continuous_feeds_sigma_and_returns_output():
    net = RecordingNet()
    score = ScoreModel(net, VESDE(0.01, 50.0, 1000))(X, T)
    sigma = 0.01 * (50 / 0.01) ** T
    assert torch.allclose(net.labels, sigma)
    assert torch.allclose(score, X + sigma.reshape(-1, 1, 1, 1))


def test_ve_discrete_feeds_level_index_from_the_top():
    net = RecordingNet()
    ScoreModel(net, VESDE(0.01, 50.0, 10), continuous=False)(X, T)
    assert net.labels.dtype == torch.long
    assert net.labels.tolist() == [round((1 - t) * 9) for t in T.tolist()]


def test_vp_continuous_feeds_999t_and_divides_by_minus_std():
    net = RecordingNet()
    score = ScoreModel(net, VPSDE(0.1, 20.0, 1000))(X, T)
    std = torch.sqrt(1 - torch.exp(2 * vp_log_mean_coeff(T)))
    assert torch.allclose(net.labels, 999 * T)
    assert torch.allclose(score, -(X + 999 * T.reshape(-1, 1, 1, 1)) / std.reshape(-1, 1, 1, 1), rtol=1e-5)


def test_subvp_is_always_continuous():
    net = RecordingNet()
    score = ScoreModel(net, SubVPSDE(0.1, 20.0, 1000), continuous=False)(X, T)
    std = 1 - torch.exp(2 * vp_log_mean_coeff(T))
    assert torch.allclose(net.labels, 999 * T)
    assert torch.allclose(score, -(X + 999 * T.reshape(-1, 1, 1, 1)) / std.reshape(-1, 1, 1, 1), rtol=1e-5)


def test_vp_discrete_uses_ddpm_alphas():
    net, N = RecordingNet(), 10
    score = ScoreModel(net, VPSDE(0.1, 20.0, N), continuous=False)(X, T)
    betas = [0.1 / N + i * (20.0 / N - 0.1 / N) / (N - 1) for i in range(N)]
    labels = T * (N - 1)
    std = torch.tensor([math.sqrt(1 - math.prod(1 - b for b in betas[: int(i) + 1])) for i in labels.tolist()])
    assert torch.allclose(net.labels, labels)
    assert torch.allclose(score, -(X + labels.reshape(-1, 1, 1, 1)) / std.reshape(-1, 1, 1, 1), rtol=1e-5)


def test_fourier_network_refuses_discrete_time():
    with pytest.raises(ValueError, match="continuous=True"):
        ScoreModel(NCSNpp(**tiny(image_size=8)), VESDE(), continuous=False)


def test_real_network_score_has_input_shape_and_follows_device_dtype():
    net = NCSNpp(**tiny(image_size=8, kind="ddpmpp")).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        score = ScoreModel(net, VPSDE())(x, torch.tensor([0.1, 0.9], dtype=torch.float64))
    assert score.shape == x.shape and score.dtype == torch.float64
