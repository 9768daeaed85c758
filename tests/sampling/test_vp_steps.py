"""VP and sub-VP at few steps: settings that would read a DDPM alpha 1 - beta_max / N <= 0 are refused."""

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling import (ALD, PC, AncestralSampling, EulerMaruyama, Langevin, ProbabilityFlowODE,
                                    ReverseDiffusion, SeededNoise, generate)
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

LAM = power_law_spectrum(8, 8, variance=0.05)
SEEDS = list(range(8))

# (sde, predictor, corrector): every combination that reads the DDPM tables.
TABLE_USERS = [
    (VPSDE(0.1, 20.0, 1000), ReverseDiffusion(), Langevin()),
    (VPSDE(0.1, 20.0, 1000), ReverseDiffusion(), None),
    (VPSDE(0.1, 20.0, 1000), AncestralSampling(), None),
    (VPSDE(0.1, 20.0, 1000), EulerMaruyama(), ALD()),
    (VPSDE(0.1, 12.5, 1000), ReverseDiffusion(), Langevin()),
    (SubVPSDE(0.1, 20.0, 1000), ReverseDiffusion(), Langevin()),
    (SubVPSDE(0.1, 20.0, 1000), EulerMaruyama(), ALD()),
]
IDS = [f"{type(s).__name__}-{s.beta_1:g}-{type(p).__name__}-{type(c).__name__}" for s, p, c in TABLE_USERS]


def test_smallest_valid_step_count_is_where_the_last_ddpm_alpha_turns_positive():
    for beta_max, n_min in ((20.0, 21), (12.5, 13), (19.99, 20)):
        sde = VPSDE(0.1, beta_max, 1000)
        assert sde.min_ddpm_steps() == n_min
        assert float(sde.with_num_scales(n_min).alphas.min()) > 0
        assert float(sde.with_num_scales(n_min - 1).alphas.min()) <= 0
    assert VESDE().min_ddpm_steps() == 1


@pytest.mark.parametrize("sde,predictor,corrector", TABLE_USERS, ids=IDS)
def test_both_sides_of_the_boundary(sde, predictor, corrector):
    n_min = sde.min_ddpm_steps()
    score = GaussianScore(0.45, LAM, sde)
    below = PC(steps=n_min - 1, predictor=predictor, corrector=corrector)
    with pytest.raises(ValueError, match=rf"at least {n_min} steps \(steps >= {n_min}.*EulerMaruyama "
                                         "with corrector: null"):
        generate(below, score, sde, SEEDS, (1, 8, 8))
    at = PC(steps=n_min, predictor=predictor, corrector=corrector, check_finite_every=1)
    x = generate(at, score, sde, SEEDS, (1, 8, 8)).x
    assert torch.isfinite(x).all()
    assert x.std() < 2.0  # a sample of the target (std ~0.22), not an exploding chain


def test_speed_up_is_refused_with_the_same_message():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"cannot be sampled in 12 steps by the ReverseDiffusion predictor "
                                         r"and the Langevin corrector \(a_t\).*speed_up <= 47.62"):
        PC(speed_up=1000 / 12).check(sde)


def test_the_refused_region_really_breaks_the_sampler():
    """Run unchecked (the sampler called directly, not through generate): the issue's 12 steps on the default VP
    are non-finite."""
    sde = VPSDE()
    score = GaussianScore(0.45, LAM, sde)
    for predictor, corrector in ((ReverseDiffusion(), Langevin()), (AncestralSampling(), None)):
        x = PC(steps=12, predictor=predictor, corrector=corrector)(score, sde, (8, 1, 8, 8),
                                                                    noise=SeededNoise(SEEDS)).x
        assert not torch.isfinite(x).all()


@pytest.mark.parametrize("sde,predictor,corrector", [
    (VPSDE(), EulerMaruyama(), None),
    (SubVPSDE(), ReverseDiffusion(), None),  # sub-VP's reverse diffusion is Euler, not DDPM
    (SubVPSDE(), EulerMaruyama(), None),
    (VESDE(), ReverseDiffusion(), Langevin()),
    (VESDE(), AncestralSampling(), ALD()),
], ids=["VP-em-none", "subVP-rd-none", "subVP-em-none", "VE-rd-langevin", "VE-anc-ald"])
def test_settings_without_ddpm_tables_work_at_any_step_count(sde, predictor, corrector):
    score = GaussianScore(0.45, LAM, sde)
    sampler = PC(steps=3, predictor=predictor, corrector=corrector)
    assert sampler.ddpm_table_users(sde) == []
    assert torch.isfinite(generate(sampler, score, sde, SEEDS, (1, 8, 8)).x).all()


def test_ode_sampler_is_not_refused():
    sde = VPSDE()
    sampler = ProbabilityFlowODE(steps=3)
    sampler.check(sde)
    assert sampler.nfe(sde) == 2 * 3 + 1


@pytest.mark.parametrize("corrector", [ALD(0.16, 1), Langevin(0.16, 1)], ids=repr)
def test_subvp_corrector_uses_the_vp_ddpm_alpha(corrector):
    """With a zero score the corrector only adds sqrt(2 step) z, so the step (hence a_t) can be read off."""
    from pds_lightning.preconditioner import Preconditioner
    from pds_lightning.sampling.noise import RecordedNoise
    from pds_lightning.sampling.step import StepContext

    sde = SubVPSDE(0.1, 20.0, 50)
    t = torch.tensor([0.3, 0.9])
    level = (t * 49).long()  # truncation, as the official code
    vp_alpha = 1 - (0.1 + (20.0 - 0.1) * level / 49) / 50  # the VP's 1 - beta_i at that level
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.zeros_like(z)
    if isinstance(corrector, ALD):
        score = lambda x, t: torch.zeros_like(x)
        std = sde.marginal_prob(x, t)[1]
        expected_step = 2 * vp_alpha * (0.16 * std) ** 2
    else:  # Langevin: ||g|| from a score of known norm (ones), ||xi|| = ||z||
        score = lambda x, t: torch.ones_like(x)
        expected_step = 2 * vp_alpha * (0.16 * z.flatten(1).norm(dim=1) / 4.0) ** 2
    x_new, x_mean = corrector.update(StepContext(sde, score, Preconditioner(), RecordedNoise([z])), x, t)
    drift = x_mean - x
    noise = (x_new - x_mean) / z
    torch.testing.assert_close(noise[:, 0, 0, 0], torch.sqrt(2 * expected_step.double()))
    if isinstance(corrector, Langevin):
        torch.testing.assert_close(drift[:, 0, 0, 0], expected_step.double())
