"""VP and sub-VP at few steps: settings that would read a DDPM alpha 1 - beta_max / N <= 0 are refused."""

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling import SamplerSettings, SeededNoise, generate, pc_sampler
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

LAM = power_law_spectrum(8, 8, variance=0.05)
SEEDS = list(range(8))

# (sde, predictor, corrector): every combination that reads the DDPM tables.
TABLE_USERS = [
    (VPSDE(0.1, 20.0, 1000), "reverse_diffusion", "langevin"),
    (VPSDE(0.1, 20.0, 1000), "reverse_diffusion", "none"),
    (VPSDE(0.1, 20.0, 1000), "ancestral_sampling", "none"),
    (VPSDE(0.1, 20.0, 1000), "euler_maruyama", "ald"),
    (VPSDE(0.1, 12.5, 1000), "reverse_diffusion", "langevin"),
    (SubVPSDE(0.1, 20.0, 1000), "reverse_diffusion", "langevin"),
    (SubVPSDE(0.1, 20.0, 1000), "euler_maruyama", "ald"),
]
IDS = [f"{type(s).__name__}-{s.beta_1:g}-{p}-{c}" for s, p, c in TABLE_USERS]


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
    below = SamplerSettings(n_steps=n_min - 1, predictor=predictor, corrector=corrector)
    with pytest.raises(ValueError, match=rf"at least {n_min} steps \(n_steps >= {n_min}.*euler_maruyama "
                                         "with corrector: none"):
        generate(below, score, sde, SEEDS, (1, 8, 8))
    at = SamplerSettings(n_steps=n_min, predictor=predictor, corrector=corrector, check_finite_every=1)
    x = generate(at, score, sde, SEEDS, (1, 8, 8)).x
    assert torch.isfinite(x).all()
    assert x.std() < 2.0  # a sample of the target (std ~0.22), not an exploding chain


def test_speed_up_is_refused_with_the_same_message():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"cannot be sampled in 12 steps by the reverse_diffusion predictor "
                                         r"and the langevin corrector.*speed_up <= 47.62"):
        SamplerSettings(speed_up=1000 / 12).steps_for(sde)


def test_the_refused_region_really_breaks_the_sampler():
    """Run unchecked (pc_sampler directly): the issue's n_steps 12 on the default VP is non-finite."""
    sde = VPSDE()
    score = GaussianScore(0.45, LAM, sde)
    for predictor, corrector in (("reverse_diffusion", "langevin"), ("ancestral_sampling", "none")):
        x = pc_sampler(score, sde, (8, 1, 8, 8), noise=SeededNoise(SEEDS), n_steps=12, predictor=predictor,
                       corrector=corrector).x
        assert not torch.isfinite(x).all()


@pytest.mark.parametrize("sde,predictor,corrector", [
    (VPSDE(), "euler_maruyama", "none"),
    (SubVPSDE(), "reverse_diffusion", "none"),  # sub-VP's reverse diffusion is Euler, not DDPM
    (SubVPSDE(), "euler_maruyama", "none"),
    (VESDE(), "reverse_diffusion", "langevin"),
    (VESDE(), "ancestral_sampling", "ald"),
], ids=["VP-em-none", "subVP-rd-none", "subVP-em-none", "VE-rd-langevin", "VE-anc-ald"])
def test_settings_without_ddpm_tables_work_at_any_step_count(sde, predictor, corrector):
    score = GaussianScore(0.45, LAM, sde)
    settings = SamplerSettings(n_steps=3, predictor=predictor, corrector=corrector)
    assert settings.ddpm_table_users(sde) == []
    assert torch.isfinite(generate(settings, score, sde, SEEDS, (1, 8, 8)).x).all()


def test_ode_sampler_is_not_refused():
    sde = VPSDE()
    settings = SamplerSettings(method="ode", n_steps=3)
    assert settings.steps_for(sde) == (3, pytest.approx(1e-3 * 1000 / 3))
