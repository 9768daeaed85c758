"""UnresolvedBands: DPM-Solver++(2M) SDE's noise on the Fourier modes the data has not yet resolved (B(sigma), issue 33;
docs/pds_stochastic.md) on exact Gaussian targets, where the sampler is affine and circulant in its draws."""


from pathlib import Path

import pytest
import torch
from helpers import circulant_law, gaussian_statistics

from pds_lightning.alpha import GaussianSurrogate, Modes
from pds_lightning.alpha.dpmpp_sde import dpmpp_2m_sde_output_moments
from pds_lightning.models.gaussian import GaussianScore
from pds_lightning.preconditioner import UnresolvedBandsGram, unresolved_gains
from pds_lightning.sampling import (PC, DPMSolverPP2MSDE, EDMHeun, EDMStochastic, Karras, Langevin, Restart, Sampler,
                                    UnresolvedBands, generate)
from pds_lightning.sde import VESDE, VPSDE
from pds_lightning.statistics import ImageStatistics, mode_variance

from test_pds_stochastic import SIGMA_MIN, impulses
from test_solvers import LAM, MEAN, H, W, target_law, w2

STATS = gaussian_statistics(LAM, MEAN)


def sampler(n_steps, sigma_max=80.0, **kw):
    return DPMSolverPP2MSDE(steps=n_steps, schedule=Karras(7.0, SIGMA_MIN, sigma_max), **kw)


def law(sde, n_steps, pds, sigma_max=80.0):
    """(mean image, per-mode variances) of the output, exactly, from impulse responses."""
    noise = impulses(n_steps)
    s = sampler(n_steps, sigma_max, pds=pds)
    M = None if pds is None else pds.preconditioner(STATS)
    x = s(GaussianScore(MEAN, LAM, sde), sde, (n_steps + 1, 1, H, W), noise=noise, preconditioner=M,
          dtype=torch.float64).x
    assert noise.calls == n_steps  # vanilla's draws: the bands shape them, they add none
    return circulant_law(x)


def test_gains_are_the_formula_by_hand():
    lam = torch.tensor([1e-4, 0.01, 0.04, 1.0], dtype=torch.float64)
    b = unresolved_gains(lam, 0.1, scale=4.0, sharpness=2.0)
    expected = [4.0 / (1.0 + (l / 0.01) ** 2) for l in lam.tolist()]  # sigma^2 = 0.01
    assert b.tolist() == pytest.approx(expected, rel=1e-12)
    assert b[2].item() == pytest.approx(4.0 / 17.0, rel=1e-12)  # lam = 4 sigma^2: 4 / (1 + 16)
    huge = unresolved_gains(torch.tensor([1e30], dtype=torch.float64), 1e-3, 4.0, 50.0)
    assert huge.item() == 0.0  # a resolved mode gets no noise; no overflow warning or nan


def test_mode_variances_from_the_statistics():
    lam = mode_variance(STATS)
    torch.testing.assert_close(lam, LAM, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(UnresolvedBands().preconditioner(STATS, centered=True).lam, 4 * LAM, rtol=1e-10,
                               atol=1e-14)  # the model sees 2 x - 1


@pytest.mark.parametrize("scale, sharpness, n_steps", [(4.0, 4.0, 8), (1.5, 1.0, 12)])
def test_sampled_law_is_the_surrogate_recursion(scale, sharpness, n_steps):
    """The sampler's exact output law equals alpha/dpmpp_sde.py's per-mode recursion with b(sigma): the two are
    independent computations (pixels and FFTs vs scalar moments per mode)."""
    sde, pds = VESDE(), UnresolvedBands(scale, sharpness)
    mean, v = law(sde, n_steps, pds)
    modes = Modes.from_surrogate(GaussianSurrogate.from_statistics(STATS), STATS.freq_statistic(torch.float64))
    gram = pds.preconditioner(STATS)
    v_rec, gamma = dpmpp_2m_sde_output_moments(
        modes, lambda sigma: unresolved_gains(modes.lam, sigma, scale, sharpness)[None], sde,
        sampler(n_steps, pds=pds))
    torch.testing.assert_close(v.flatten(), v_rec[0], rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(mean, torch.full_like(mean, MEAN) * gamma[0, 0], rtol=1e-9, atol=1e-12)
    assert gram.gains(1.0).shape == (1, H, W // 2 + 1)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE()], ids=["VE", "VP"])
def test_law_converges_to_the_target(sde):
    """Second order for a gentle B(sigma); the default (sharp, scale 4) converges too, below vanilla all the way."""
    errors = [w2(law(sde, n, UnresolvedBands(1.0, 1.0), sigma_max=1e4), target_law()) for n in (64, 128, 256)]
    gains = [a / b for a, b in zip(errors, errors[1:])]
    assert min(gains) > 3.5 and errors[-1] < 6e-4, (errors, gains)
    default = [w2(law(sde, n, UnresolvedBands(), sigma_max=1e4), target_law()) for n in (32, 64, 256)]
    vanilla = [w2(law(sde, n, None, sigma_max=1e4), target_law()) for n in (32, 64, 256)]
    assert default[0] > default[1] > default[2] and default[2] < 6e-4, default
    assert all(d < v for d, v in zip(default, vanilla)), (default, vanilla)


def test_beats_vanilla_and_the_ode_at_a_small_budget():
    """The reason it exists (benchmarks/results/pds_stochastic_theory.md on the 64 px target): at 10 NFE the bands'
    exact W2 is below both the vanilla 2M SDE's and DPM-Solver++(2M)'s (eta 0)."""
    sde = VESDE()
    bands = w2(law(sde, 10, UnresolvedBands()), target_law())
    vanilla = w2(law(sde, 10, None), target_law())
    noise = impulses(10)
    ode = w2(circulant_law(sampler(10, eta=0.0)(GaussianScore(MEAN, LAM, sde), sde, (11, 1, H, W), noise=noise,
                                                 dtype=torch.float64).x), target_law())
    assert bands < 0.7 * min(vanilla, ode), (bands, vanilla, ode)


def test_component_round_trip_and_exact_nfe():
    s = DPMSolverPP2MSDE(steps=6, pds=UnresolvedBands(3.0, 2.0))
    config = s.config()
    assert config["init_args"]["pds"] == {"class_path": "pds_lightning.sampling.pds.UnresolvedBands",
                                          "init_args": {"scale": 3.0, "sharpness": 2.0}}
    again = Sampler.from_config(config, what="model.sampler")
    sde = VESDE(0.01, 10.0, 100)
    result = generate(again, GaussianScore(MEAN, LAM.float(), sde), sde, [0, 1], (1, H, W), statistics=STATS)
    plain = generate(again.replace(pds=None), GaussianScore(MEAN, LAM.float(), sde), sde, [0, 1], (1, H, W))
    assert result.nfe == plain.nfe == again.nfe(sde) == 6
    assert not torch.allclose(result.x, plain.x)


@pytest.mark.parametrize("make, message", [
    (lambda: UnresolvedBands(scale=0.0), "UnresolvedBands: scale must be a finite number > 0"),
    (lambda: UnresolvedBands(sharpness=-1.0), "UnresolvedBands: sharpness must be a finite number > 0"),
    (lambda: DPMSolverPP2MSDE(pds=UnresolvedBands(), corrector=Langevin()), "has no Langevin corrector form here"),
    (lambda: DPMSolverPP2MSDE(pds=UnresolvedBands(), eta=0.0), "eta 0 injects no noise for PDS to shape"),
    (lambda: EDMStochastic(pds=UnresolvedBands()), "which only DPMSolverPP2MSDE does"),
    (lambda: Restart(pds=UnresolvedBands()), "which only DPMSolverPP2MSDE does"),
    (lambda: EDMHeun(pds=UnresolvedBands(), corrector=Langevin()), "which only DPMSolverPP2MSDE does"),
    (lambda: PC(pds=UnresolvedBands()), r"pc: pds wants a PDS component or None \(UnresolvedBands shapes the noise"),
])
def test_refuses(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_refuses_statistics_it_cannot_use():
    sde = VESDE(0.01, 10.0, 100)
    s = DPMSolverPP2MSDE(steps=4, pds=UnresolvedBands())
    score = GaussianScore(MEAN, LAM.float(), sde)
    with pytest.raises(ValueError, match="uses UnresolvedBands but no data statistics are available"):
        generate(s, score, sde, [0], (1, H, W))
    no_mean = ImageStatistics.from_moments(1, STATS.power_mean, torch.zeros_like(STATS.mean), STATS.sq_mean)
    with pytest.raises(ValueError, match=r"UnresolvedBands needs the pixel mean of the data.*use PDS\(filters='freq'\)"):
        generate(s, score, sde, [0], (1, H, W), statistics=no_mean)
    with pytest.raises(ValueError, match=r"mode variances are \[C, H, W\] = \(1, 8, 8\) but the images are"):
        generate(s, lambda x, t: -x, sde, [0], (1, 4, 4), statistics=STATS)
    with pytest.raises(ValueError, match="mode variances are not symmetric under k -> -k"):
        UnresolvedBandsGram(torch.rand(1, H, W, dtype=torch.float64) + 0.1, 4.0, 4.0)


def test_score_module_builds_the_bands_in_its_model_space():
    """ScoreModule.sample passes its model space: a centered model's bands use 4 lam (2 x - 1), as generate with
    centered=True does, and not the [0, 1] variances."""
    from helpers import tiny_module, tiny_net

    from pds_lightning.images import to_unit_range

    module = tiny_module(tiny_net(centered=True), statistics=True, centered=True)
    s = DPMSolverPP2MSDE(steps=4, pds=UnresolvedBands())
    seeds = torch.arange(2)
    got = module.sample(s, seeds).x
    score, stats = module.score_fn(ema=True), module.data_statistics
    same = generate(s, score, module.sde, seeds, module.image_shape, statistics=stats, centered=True).x
    other = generate(s, score, module.sde, seeds, module.image_shape, statistics=stats, centered=False).x
    torch.testing.assert_close(got, to_unit_range(same, True).clamp(0, 1), rtol=0, atol=0)
    assert not torch.allclose(got, to_unit_range(other, True).clamp(0, 1))


def test_the_cli_builds_and_refuses_it(capsys):
    from helpers import predict_error

    from pds_lightning.cli import cli_main

    root = Path(__file__).resolve().parents[2]
    model = cli_main(["--config", str(root / "configs" / "demo.yaml"), "--model.sampler",
                      "pds_lightning.sampling.DPMSolverPP2MSDE", "--model.sampler.steps", "20", "--model.sampler.pds",
                      "pds_lightning.sampling.UnresolvedBands", "--model.sampler.pds.sharpness", "8"], run=False).model
    assert model.sampler == DPMSolverPP2MSDE(steps=20, pds=UnresolvedBands(4.0, 8.0))
    err = predict_error(capsys, "--model.sampler", "pds_lightning.sampling.EDMStochastic", "--model.sampler.steps", "3",
                        "--model.sampler.pds", "pds_lightning.sampling.UnresolvedBands")
    assert ("UnresolvedBands shapes the noise a solver integrates per Fourier mode, which only DPMSolverPP2MSDE does "
            "(EDMStochastic has none to shape)") in err
