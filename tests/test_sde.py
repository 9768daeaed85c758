import math

import pytest
import torch

from pds_lightning.sampling import PC, EDMHeun
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE, resolve_steps


def test_ve_marginal_and_sigma_grid():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, num_scales=20)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0])
    mean, std = sde.marginal_prob(x, t)
    assert torch.equal(mean, x)
    torch.testing.assert_close(std, torch.tensor([0.01, 50.0], dtype=torch.float64))
    assert std.dtype == x.dtype
    # Geometric grid from sigma_min to sigma_max.
    torch.testing.assert_close(sde.discrete_sigmas[[0, -1]], torch.tensor([0.01, 50.0]))
    ratio = sde.discrete_sigmas[1:] / sde.discrete_sigmas[:-1]
    torch.testing.assert_close(ratio, torch.full_like(ratio, (5000.0) ** (1 / 19)))
    assert torch.equal(sde.prior_sampling(torch.ones(1)), torch.tensor([50.0]))


def test_ve_smld_discretisation_telescopes():
    sde = VESDE(num_scales=20)
    x = torch.zeros(20, 1, 2, 2)
    t = ((torch.arange(20) + 0.25) / 19).clamp(max=1.0)  # hits each level index once
    assert torch.equal(sde.timestep(t), torch.arange(20))
    f, G = sde.discretize(x, t)
    assert torch.equal(f, x)
    # sigma_0 at the first level (sigma_{-1} = 0), and the sum of G^2 telescopes to sigma_max^2.
    torch.testing.assert_close(G[0], torch.tensor(0.01))
    torch.testing.assert_close((G ** 2).sum(), torch.tensor(2500.0))


def test_ve_sde_matches_marginal_variance_derivative():
    sde = VESDE()
    t = torch.tensor([0.3], dtype=torch.float64)
    _, g = sde.sde(torch.zeros(1, 1, 1, 1, dtype=torch.float64), t)
    # d sigma^2 / dt = g^2
    h = 1e-6
    s2 = lambda s: sde.sigma(torch.tensor([s], dtype=torch.float64)) ** 2
    torch.testing.assert_close(g ** 2, (s2(0.3 + h) - s2(0.3 - h)) / (2 * h), rtol=1e-6, atol=0)


def test_vp_tables_and_marginal():
    sde = VPSDE(beta_min=0.1, beta_max=20.0, num_scales=1000)
    torch.testing.assert_close(sde.discrete_betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    torch.testing.assert_close(sde.sqrt_alphas_cumprod ** 2 + sde.sqrt_1m_alphas_cumprod ** 2,
                               torch.ones(1000))
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    t = torch.tensor([1.0], dtype=torch.float64)
    mean, std = sde.marginal_prob(x, t)
    lmc = -0.25 * (20 - 0.1) - 0.5 * 0.1
    torch.testing.assert_close(mean.flatten(), torch.tensor([math.exp(lmc)], dtype=torch.float64))
    torch.testing.assert_close(std, torch.tensor([math.sqrt(1 - math.exp(2 * lmc))], dtype=torch.float64))
    # The discrete DDPM chain ends near the continuous marginal.
    assert abs(sde.sqrt_alphas_cumprod[-1].item() - math.exp(lmc)) < 1e-3


def test_vp_ddpm_discretisation():
    sde = VPSDE(num_scales=100)
    x = torch.full((1, 1, 2, 2), 2.0)
    t = torch.tensor([1.0])
    f, G = sde.discretize(x, t)
    beta = sde.discrete_betas[99]
    torch.testing.assert_close(f, (torch.sqrt(1 - beta) - 1) * x)
    torch.testing.assert_close(G, torch.sqrt(beta).reshape(1))


def test_subvp_marginal_and_euler():
    sde = SubVPSDE(num_scales=50)
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    t = torch.tensor([0.5], dtype=torch.float64)
    mean, std = sde.marginal_prob(x, t)
    lmc = -0.25 * 0.25 * 19.9 - 0.5 * 0.5 * 0.1
    torch.testing.assert_close(std, torch.tensor([1 - math.exp(2 * lmc)], dtype=torch.float64))
    drift, g = sde.sde(x, t)
    f, G = sde.discretize(x, t)
    torch.testing.assert_close(f, drift / 50)
    torch.testing.assert_close(G, g * math.sqrt(1 / 50))
    beta = 0.1 + 0.5 * 19.9
    torch.testing.assert_close(g ** 2, torch.tensor([beta * (1 - math.exp(4 * lmc))], dtype=torch.float64))


@pytest.mark.parametrize("sde", [VESDE(num_scales=10), VPSDE(num_scales=100), SubVPSDE(num_scales=10)])
def test_reverse_sde_and_probability_flow(sde):
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    t = torch.tensor([0.7, 0.2], dtype=torch.float64)
    score_fn = lambda y, s: -3.0 * y
    drift, g = sde.sde(x, t)
    rd, rg = sde.reverse(score_fn).sde(x, t)
    torch.testing.assert_close(rd, drift - g[:, None, None, None] ** 2 * (-3.0 * x))
    torch.testing.assert_close(rg, g)
    od, og = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    torch.testing.assert_close(od, drift - 0.5 * g[:, None, None, None] ** 2 * (-3.0 * x))
    assert torch.equal(og, torch.zeros_like(g))
    f, G = sde.discretize(x, t)
    rf, rG = sde.reverse(score_fn).discretize(x, t)
    torch.testing.assert_close(rf, f - G[:, None, None, None] ** 2 * (-3.0 * x))
    assert sde.reverse(score_fn).N == sde.N


def test_time_grid_and_with_num_scales():
    sde = VESDE(num_scales=1000)
    grid = sde.time_grid(5, 1e-3)
    torch.testing.assert_close(grid, torch.tensor([1.0, 0.75025, 0.5005, 0.25075, 1e-3]))
    small = sde.with_num_scales(40)
    assert small.N == 40 and small.sigma_max == 50.0 and len(small.discrete_sigmas) == 40
    assert VPSDE().with_num_scales(7).discrete_betas.shape == (7,)
    assert type(SubVPSDE().with_num_scales(7)) is SubVPSDE


def test_resolve_steps_official_rule():
    assert resolve_steps(1000, 1e-5) == (1000, 1e-5)
    N, eps = resolve_steps(2000, 1e-5, speed_up=30)
    assert N == 66 and eps == pytest.approx(3e-4)
    N, eps = resolve_steps(1000, 1e-3, speed_up=3.0)
    assert N == 333 and eps == pytest.approx(3e-3)
    N, eps = resolve_steps(1000, 1e-3, steps=100)
    assert N == 100 and eps == pytest.approx(1e-2)
    assert resolve_steps(1000, 1e-3, steps=100, eps=1e-4) == (100, 1e-4)


def test_resolve_steps_errors():
    with pytest.raises(ValueError, match="leaves"):
        resolve_steps(20, 1e-5, speed_up=40)
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\)"):
        resolve_steps(20, 1e-3, steps=10, eps=1.5)
    # The values themselves are checked once, where the user gives them: the sampler component.
    with pytest.raises(ValueError, match=r"give either steps \(4\) or speed_up \(2\), not both"):
        PC(steps=4, speed_up=2)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        PC(steps=0)
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        EDMHeun(steps=1)


def test_ve_sigma_and_prev_are_the_smld_levels():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, num_scales=5)
    t = torch.tensor([0.0, 0.3, 1.0])  # levels int(t * 4): 0, 1, 4
    sigma, sigma_prev = sde.sigma_and_prev(t, torch.zeros(3, dtype=torch.float64))
    levels = [0.01 * 5000 ** (i / 4) for i in range(5)]
    # The level table is float32 (as the official code), cast to the input's dtype.
    torch.testing.assert_close(sigma, torch.tensor([levels[0], levels[1], levels[4]], dtype=torch.float64), rtol=1e-6,
                               atol=0)
    torch.testing.assert_close(sigma_prev, torch.tensor([0.0, levels[0], levels[3]], dtype=torch.float64), rtol=1e-6,
                               atol=0)
    assert sigma.dtype == torch.float64


def test_ddpm_alpha_is_one_for_ve_and_one_minus_beta_for_vp():
    t = torch.tensor([0.0, 0.5, 1.0])
    like = torch.zeros(3)
    assert torch.equal(VESDE(num_scales=10).ddpm_alpha(t, like), torch.ones(3))
    for sde in (VPSDE(0.1, 20.0, 10), SubVPSDE(0.1, 20.0, 10)):
        betas = [(0.1 + (20.0 - 0.1) * i / 9) / 10 for i in (0, 4, 9)]  # levels int(t * 9): 0, 4, 9
        torch.testing.assert_close(sde.ddpm_alpha(t, like), 1 - torch.tensor(betas))


def test_discretised_follows_resolve_steps():
    sde = VESDE(num_scales=1000)
    same, N, eps = sde.discretised()
    assert same is sde and (N, eps) == (1000, 1e-5)
    small, N, eps = sde.discretised(speed_up=4.0)
    assert (small.N, N) == (250, 250) and eps == pytest.approx(4e-5) and small.sigma_max == sde.sigma_max
    vp, N, eps = SubVPSDE(num_scales=1000).discretised(steps=100, eps=1e-4)
    assert type(vp) is SubVPSDE and (vp.N, N, eps) == (100, 100, 1e-4)
