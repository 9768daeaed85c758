"""VP and sub-VP at few steps: settings that would read a DDPM alpha 1 - beta_max / N <= 0 are refused."""

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.legacy import SamplerSettings
from pds_lightning.sampling import SeededNoise, generate, pc_sampler
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
    with pytest.raises(ValueError, match=rf"at least {n_min} steps \(pc_steps >= {n_min}.*EulerMaruyama "
                                         "with corrector: null"):
        generate(below, score, sde, SEEDS, (1, 8, 8))
    at = SamplerSettings(n_steps=n_min, predictor=predictor, corrector=corrector, check_finite_every=1)
    x = generate(at, score, sde, SEEDS, (1, 8, 8)).x
    assert torch.isfinite(x).all()
    assert x.std() < 2.0  # a sample of the target (std ~0.22), not an exploding chain


def test_speed_up_is_refused_with_the_same_message():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"cannot be sampled in 12 steps by the reverse_diffusion predictor "
                                         r"and the langevin corrector.*speed_up <= 47.62"):
        SamplerSettings(speed_up=1000 / 12).to_sampler().check(sde)


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
    assert settings.to_sampler().ddpm_table_users(sde) == []
    assert torch.isfinite(generate(settings, score, sde, SEEDS, (1, 8, 8)).x).all()


def test_ode_sampler_is_not_refused():
    sde = VPSDE()
    settings = SamplerSettings(method="ode", n_steps=3)
    assert settings.to_sampler().nfe(sde) == 2 * 3 + 1


@pytest.mark.parametrize("corrector", ["ald", "langevin"])
def test_subvp_corrector_uses_the_vp_ddpm_alpha(corrector):
    """With a zero score the corrector only adds sqrt(2 step) z, so the step (hence a_t) can be read off."""
    from pds_lightning.preconditioner import Preconditioner
    from pds_lightning.sampling.correctors import CORRECTORS
    from pds_lightning.sampling.noise import RecordedNoise

    sde = SubVPSDE(0.1, 20.0, 50)
    t = torch.tensor([0.3, 0.9])
    level = (t * 49).long()  # truncation, as the official code
    vp_alpha = 1 - (0.1 + (20.0 - 0.1) * level / 49) / 50  # the VP's 1 - beta_i at that level
    z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.zeros_like(z)
    if corrector == "ald":
        score = lambda x, t: torch.zeros_like(x)
        std = sde.marginal_prob(x, t)[1]
        expected_step = 2 * vp_alpha * (0.16 * std) ** 2
    else:  # Langevin: ||g|| from a score of known norm (ones), ||xi|| = ||z||
        score = lambda x, t: torch.ones_like(x)
        expected_step = 2 * vp_alpha * (0.16 * z.flatten(1).norm(dim=1) / 4.0) ** 2
    step = CORRECTORS[corrector](sde, score, Preconditioner(), RecordedNoise([z]), 0.16, 1)
    x_new, x_mean = step.update(x, t)
    drift = x_mean - x
    noise = (x_new - x_mean) / z
    torch.testing.assert_close(noise[:, 0, 0, 0], torch.sqrt(2 * expected_step.double()))
    if corrector == "langevin":
        torch.testing.assert_close(drift[:, 0, 0, 0], expected_step.double())
