"""Sigma-space samplers (sampling/solvers.py and one file per method) on exact Gaussian scores, where the
target law is known.

Exact output law: on a stationary Gaussian target every sampler here is affine in its standard-normal draws,
x_out = A + sum_j C_j z_j with C_j circulant. Feeding the draws as unit impulses (row j + 1 of the batch gets
a delta in draw j and zeros elsewhere, row 0 all zeros) gives A = x_out[0] and C_j's kernel
x_out[j + 1] - A, so the per-mode output variance is v_k = sum_j |fft2(kernel_j)_k|^2 and
W2^2 = |A - mean|^2 + sum_k (sqrt(v_k) - sqrt(lam_k))^2, with no sampling error.
"""

import math

import pytest
import torch

from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling import (PC, PDS, DPMSolverPP2M, EDMHeun, EDMStochastic, Euler, Karras, Langevin,
                                    RecordedNoise, SDEGrid, generate)
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE

H = W = 8
MEAN = 0.45
LAM = power_law_spectrum(H, W, variance=0.05)  # [1, H, W] float64
SIGMA_MIN, SIGMA_MAX = 2e-3, 80.0
SDES = {"VE": VESDE(), "VP": VPSDE(), "subVP": SubVPSDE()}


def draws(sampler) -> int:
    """Standard-normal draws of one run: the initial one, plus one per step for EDMStochastic."""
    return 1 + (sampler.steps if isinstance(sampler, EDMStochastic) else 0)


def solver(cls, steps, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0, schedule=None, **kw):
    """`cls` with `steps` levels on Karras(rho, sigma_min, sigma_max), or on `schedule`."""
    return cls(steps=steps, schedule=schedule or Karras(rho, sigma_min, sigma_max), **kw)


def output_law(cls, sde, steps, **kw):
    """(mean image A, per-mode variances v over the full fft2 grid) of the sampler's output, exactly."""
    sampler = solver(cls, steps, **kw)
    n = draws(sampler)
    stream = [torch.zeros(n + 1, 1, H, W, dtype=torch.float64) for _ in range(n)]
    for j in range(n):
        stream[j][j + 1, 0, 0, 0] = 1.0
    result = sampler(GaussianScore(MEAN, LAM, sde), sde, (n + 1, 1, H, W), noise=RecordedNoise(stream),
                     dtype=torch.float64)
    assert result.nfe == sampler.nfe(sde)
    x = result.x[:, 0]
    return x[0], (torch.fft.fft2(x[1:] - x[0]).abs() ** 2).sum(0)


def w2(law_a, law_b) -> float:
    """W2 per pixel between two Gaussian laws with circulant covariances (commuting)."""
    (a, va), (b, vb) = law_a, law_b
    return math.sqrt(((a - b).pow(2).sum() + (va.sqrt() - vb.sqrt()).pow(2).sum()).item() / (H * W))


def target_law():
    return torch.full((H, W), MEAN, dtype=torch.float64), LAM[0]


def ode_limit_law(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX):
    """N -> infinity limit of the deterministic samplers: the exact flow x - mean ~ sqrt(lam + sigma^2) from
    sigma_max z (prior variance sigma_max^2) to sigma_min, then the last step's D(x; sigma_min)."""
    lam = LAM[0]
    flow = torch.sqrt((lam + sigma_min ** 2) / (lam + sigma_max ** 2))
    gain = flow * lam / (lam + sigma_min ** 2)  # per mode, x_out - mean = gain (sigma_max z - mean)
    mean_dc = MEAN * H * W * (1 - gain[0, 0])  # fft2 of the constant mean is MEAN H W at DC only
    mean = torch.fft.ifft2(torch.zeros(H, W, dtype=torch.complex128).index_put_(
        (torch.tensor([0]), torch.tensor([0])), torch.tensor([mean_dc], dtype=torch.complex128))).real
    return mean, (gain * sigma_max) ** 2


# ---- sigma-space maps of the SDEs ------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SDES))
def test_sigma_maps_invert_and_agree_with_marginal_prob(name):
    sde = SDES[name]
    t = torch.linspace(sde.default_eps, sde.T, 101, dtype=torch.float64)
    sigma = sde.sigma_of_t(t)
    torch.testing.assert_close(sde.t_of_sigma(sigma), t, rtol=1e-12, atol=1e-14)
    sigmas = torch.logspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(sde.sigma_of_t(sde.t_of_sigma(sigmas)), sigmas, rtol=1e-12, atol=0)
    mean_coeff, std = sde.marginal_prob(torch.ones(len(t), 1, 1, 1, dtype=torch.float64), t)
    torch.testing.assert_close(sde.scale_of_t(t), mean_coeff.flatten(), rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.scale_of_t(t) * sigma, std, rtol=1e-12, atol=0)
    assert torch.all(sigma[1:] > sigma[:-1])


def test_sigma_maps_closed_forms():
    vp, sub = VPSDE(), SubVPSDE()
    lmc = -0.25 * 0.5 ** 2 * (20 - 0.1) - 0.5 * 0.5 * 0.1  # t = 0.5
    t = torch.tensor([0.5], dtype=torch.float64)
    assert vp.sigma_of_t(t).item() == pytest.approx(math.sqrt(math.exp(-2 * lmc) - 1), rel=1e-12)
    assert sub.sigma_of_t(t).item() == pytest.approx(math.exp(-lmc) - math.exp(lmc), rel=1e-12)
    assert VESDE(0.01, 50).sigma_of_t(t).item() == pytest.approx(0.01 * 5000 ** 0.5, rel=1e-12)


def test_schedules_return_their_sigmas():
    sde = VESDE(0.01, 50)
    karras = Karras(rho=7.0).sigmas(sde, 5, 1e-5)
    lo, hi = 0.01 * 5000 ** 1e-5, 50.0
    expected = [(hi ** (1 / 7) + i / 4 * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7 for i in range(5)] + [0.0]
    torch.testing.assert_close(karras, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    assert Karras(rho=1.0, sigma_min=1.0, sigma_max=3.0).sigmas(sde, 3, 0.5).tolist() == [3.0, 2.0, 1.0, 0.0]
    # without eps: the end time of a sampler with 5 steps on this SDE (1e-5 * 1000 / 5), as EDMHeun(steps=5) uses
    torch.testing.assert_close(Karras().sigmas(sde, 5), Karras().sigmas(sde, 5, 2e-3), rtol=1e-15, atol=0)
    assert EDMHeun(steps=5).sigmas(sde) == Karras().sigmas(sde, 5).tolist()
    grid = SDEGrid().sigmas(sde, 5, 1e-5)
    torch.testing.assert_close(grid[:-1], sde.sigma_of_t(sde.time_grid(5, 1e-5).double()))
    assert grid[-1] == 0


# ---- hand-computed cases on a 1-pixel Gaussian N(1, 1) (VE, s = 1): D(x; sigma) = 1 + (x - 1) / (1 + sigma^2)
def scalar(cls, stream, steps, **kw):
    sde = VESDE()
    score = GaussianScore(1.0, torch.ones(1, 1, 1, dtype=torch.float64), sde)
    noise = RecordedNoise([torch.full((1, 1, 1, 1), z, dtype=torch.float64) for z in stream])
    result = solver(cls, steps, **kw)(score, sde, (1, 1, 1, 1), noise=noise, dtype=torch.float64)
    return result.x.item(), result.nfe


def test_heun_two_steps_by_hand():
    # sigmas 2, 1, 0; x = 2 z = 2. Step 1 (Heun): D(2; 2) = 1 + 1/5 = 1.2, d = (2 - 1.2) / 2 = 0.4,
    # x_e = 2 - 0.4 = 1.6, D(1.6; 1) = 1 + 0.6/2 = 1.3, d' = 0.3, x = 2 - (0.4 + 0.3) / 2 = 1.65.
    # Step 2 (Euler to 0): D(1.65; 1) = 1.325, x = 1.65 - (1.65 - 1.325) = 1.325. NFE 3.
    x, nfe = scalar(EDMHeun, [1.0], steps=2, sigma_min=1.0, sigma_max=2.0)
    assert x == pytest.approx(1.325, abs=1e-12) and nfe == 3


def test_euler_two_steps_by_hand():
    # Step 1: x = 2 + (1 - 2) (2 - 1.2) / 2 = 1.6. Step 2: x = 1.6 - (1.6 - D(1.6; 1)) = 1.3. NFE 2.
    x, nfe = scalar(Euler, [1.0], steps=2, sigma_min=1.0, sigma_max=2.0)
    assert x == pytest.approx(1.3, abs=1e-12) and nfe == 2


def test_dpmpp_2m_by_hand():
    # rho 1: sigmas 3, 2, 1, 0; x = 3. Step 1 (first order): D(3; 3) = 1 + 2/10 = 1.2,
    # x = (2/3) 3 + (1 - 2/3) 1.2 = 2.4. Step 2 (second order): D(2.4; 2) = 1 + 1.4/5 = 1.28,
    # h = log 2, h_prev = log 1.5, r = h_prev / h, D_d = (1 + 1/(2r)) 1.28 - 1.2 / (2r),
    # x = (1/2) 2.4 + (1 - 1/2) D_d. Step 3 (to 0): x = D(x; 1) = 1 + (x - 1) / 2. NFE 3.
    r = math.log(1.5) / math.log(2)
    d_d = (1 + 1 / (2 * r)) * 1.28 - 1.2 / (2 * r)
    x2 = 0.5 * 2.4 + 0.5 * d_d
    x, nfe = scalar(DPMSolverPP2M, [1.0], steps=3, sigma_min=1.0, sigma_max=3.0, rho=1.0)
    assert x == pytest.approx(1 + (x2 - 1) / 2, abs=1e-12) and nfe == 3
    assert x == pytest.approx(1.4370951129, abs=1e-9)


def test_edm_stochastic_two_steps_by_hand():
    # S_churn 0.5, N 2: gamma = 0.25 on both steps; draws z0 = 1 (x = 2), then 0.5 and -1.
    # Step 1: sigma_hat = 2.5, x = 2 + sqrt(2.5^2 - 2^2) 0.5 = 2.75; Heun 2.5 -> 1:
    # D(2.75; 2.5) = 1 + 1.75 / 7.25, d = (2.75 - D) / 2.5, x_e = 2.75 - 1.5 d, d' = (x_e - D(x_e; 1)) / 1,
    # x = 2.75 - 1.5 (d + d') / 2. Step 2: sigma_hat = 1.25, x += sqrt(1.25^2 - 1) (-1) = x - 0.75,
    # then Euler to 0: x = D(x; 1.25) = 1 + (x - 1) / (1 + 1.5625). NFE 3.
    D = lambda x, s: 1 + (x - 1) / (1 + s * s)
    d = (2.75 - D(2.75, 2.5)) / 2.5
    x_e = 2.75 - 1.5 * d
    x1 = 2.75 - 1.5 * (d + (x_e - D(x_e, 1.0))) / 2
    expected = D(x1 - 0.75, 1.25)
    x, nfe = scalar(EDMStochastic, [1.0, 0.5, -1.0], steps=2, sigma_min=1.0, sigma_max=2.0, S_churn=0.5)
    assert x == pytest.approx(expected, abs=1e-12) and nfe == 3
    assert x == pytest.approx(1.0899915896, abs=1e-9)


# ---- convergence at the method's order, and to the target -----------------------------------------
ORDERS = {EDMHeun: 3.0, DPMSolverPP2M: 3.0, Euler: 1.7}


@pytest.mark.parametrize("method", list(ORDERS), ids=lambda c: c.__name__)
def test_deterministic_error_falls_at_its_order(method):
    limit = ode_limit_law()
    errors = [w2(output_law(method, SDES["VP"], n), limit) for n in (8, 16, 32, 64)]
    gains = [a / b for a, b in zip(errors, errors[1:])]
    # Doubling N doubles the NFE (Heun: 2N - 1); the asymptotic range is the last two doublings.
    assert min(gains[1:]) >= ORDERS[method], (errors, gains)
    if method is Euler:
        assert max(gains[1:]) < 2.5, (errors, gains)  # first order: not faster than ~2x
    # To the target itself: with sigma_max = 1e4 the prior sigma_max z misses the data mean by only
    # MEAN sqrt(lam_0) / sigma_max (at 80 that offset alone is 3e-3); 512 levels, 2nd order: < 1e-4.
    final = w2(output_law(method, SDES["VP"], 512, sigma_max=1e4), target_law())
    assert final < (4e-3 if method is Euler else 1e-4), final


def test_stochastic_sampler_converges():
    kw = dict(S_churn=10.0, S_tmin=0.01, S_tmax=20.0)
    reference = output_law(EDMStochastic, SDES["VE"], 256, **kw)
    errors = [w2(output_law(EDMStochastic, SDES["VE"], n, **kw), reference) for n in (8, 16, 32)]
    gains = [a / b for a, b in zip(errors, errors[1:])]
    assert min(gains) >= 1.8, (errors, gains)
    assert w2(reference, target_law()) < 2e-3


def test_sde_grid_schedule_reaches_the_target():
    sde = SDES["VE"]
    law = output_law(EDMHeun, sde, 128, schedule=SDEGrid())
    # VE's own grid is geometric from sigma(eps) = 0.01 5000^eps to sigma(T) = 50: the exact flow between them.
    limit = ode_limit_law(float(sde.sigma_of_t(torch.tensor(sde.default_eps))), sde.sigma_max)
    assert w2(law, limit) < 1e-3


@pytest.mark.parametrize("method", [EDMHeun, EDMStochastic, DPMSolverPP2M, Euler], ids=lambda c: c.__name__)
def test_ve_vp_subvp_give_the_same_samples(method):
    """Same noise levels, same draws: the sigma-space samplers do not depend on how the SDE scales x."""
    laws = [output_law(method, SDES[n], 6, S_churn=1.0) if method is EDMStochastic
            else output_law(method, SDES[n], 6) for n in SDES]
    for other in laws[1:]:
        torch.testing.assert_close(other[0], laws[0][0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(other[1], laws[0][1], rtol=1e-8, atol=1e-12)


# ---- through generate -----------------------------------------------------------------------------
class ExactStatistics:
    def freq_statistic(self):
        power = H * W * LAM.expand(1, H, W).clone()
        power[:, 0, 0] += (H * W * MEAN) ** 2
        return torch.log1p(power).float()

    def space_statistic(self):
        return torch.full((1, H, W), MEAN ** 2 + LAM.mean().item())


@pytest.mark.parametrize("sampler,nfe", [
    (EDMHeun(steps=5), 9),
    (DPMSolverPP2M(steps=5), 5),
    (Euler(steps=5, schedule=SDEGrid()), 5),
    (EDMStochastic(steps=5, S_churn=5.0), 9),
    (EDMHeun(steps=5, corrector=Langevin(steps_per_level=2), pds=PDS(filters="freq")), 17),
    (DPMSolverPP2M(steps=5, corrector=Langevin()), 9),
], ids=repr)
def test_generate_counts_nfe_and_keeps_seeds_independent_of_the_batch(sampler, nfe):
    sde = VPSDE()
    score = GaussianScore(MEAN, LAM, sde)
    both = generate(sampler, score, sde, [3, 7], (1, H, W), statistics=ExactStatistics())
    alone = generate(sampler, score, sde, [7], (1, H, W), statistics=ExactStatistics())
    assert both.nfe == alone.nfe == nfe == sampler.nfe(sde)
    torch.testing.assert_close(both.x[1:], alone.x, rtol=0, atol=1e-6)
    assert not torch.allclose(both.x[0], both.x[1])


def test_langevin_corrector_between_steps_by_hand():
    # Euler, sigmas 2, 1, 0, one PDS Langevin step at sigma = 1 (VE: t = t(1), s = 1, a_t = 1), no
    # preconditioner. Draws: z0 = 1 (x = 2), corrector z = 0.5. Step 1: x = 1.6 (as above).
    # Corrector: g = score(1.6) = -(1.6 - 1) / (1 + 1) = -0.3, step = 2 (0.16 |0.5| / |g|)^2,
    # x = 1.6 + step g + sqrt(2 step) 0.5. Step 2: x = D(x; 1) = 1 + (x - 1) / 2. NFE 3.
    step = 2 * (0.16 * 0.5 / 0.3) ** 2
    x1 = 1.6 + step * -0.3 + math.sqrt(2 * step) * 0.5
    x, nfe = scalar(Euler, [1.0, 0.5], steps=2, sigma_min=1.0, sigma_max=2.0, corrector=Langevin())
    assert x == pytest.approx(1 + (x1 - 1) / 2, abs=1e-12) and nfe == 3
    assert x == pytest.approx(1.412, abs=1e-9)


@pytest.mark.parametrize("make,message", [
    (lambda: EDMHeun(schedule=Karras(rho=0.0)), "Karras: rho must be a finite number > 0"),
    (lambda: EDMStochastic(S_churn=-1.0), "S_churn must be a finite number >= 0"),
    (lambda: EDMStochastic(S_noise=0.0), "S_noise must be a finite number > 0"),
    (lambda: EDMStochastic(S_churn=1.0, S_tmin=2.0, S_tmax=1.0), r"S_tmax must be a finite number >= 2 \(S_tmin\)"),
    (lambda: DPMSolverPP2M(steps=1), "steps must be an integer >= 2"),
    (lambda: Euler(pds=PDS(filters="freq")), "Euler uses PDS only in its Langevin corrector"),
    (lambda: EDMHeun(schedule="linear"), "schedule wants a schedule component"),
    (lambda: Karras(sigma_min=2.0, sigma_max=1.0), "need sigma_min < sigma_max"),
    (lambda: Euler(corrector="yes"), "corrector wants a Langevin corrector or None, got 'yes'"),
])
def test_bad_settings_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_speed_up_leaving_too_few_levels_is_rejected():
    with pytest.raises(ValueError, match="needs >= 2 noise levels"):
        generate(EDMHeun(speed_up=1000), GaussianScore(MEAN, LAM, VESDE()), VESDE(), [0], (1, H, W))
