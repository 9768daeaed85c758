"""Alpha choosers (Surrogate, Pilot): the Gaussian-surrogate prediction against the sampler itself, on Gaussian
targets."""

import pytest
import torch
from helpers import run_sampler

from pds_lightning.alpha import GaussianSurrogate, Pilot, Surrogate, choose_alpha, predict_w2, resolve_alpha
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sampling import PC, PDS, Langevin, generate
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics

SIZE, MEAN = 16, 0.45
SDE = VESDE(0.01, 5.0, 1000)
BATCH = 2048


class AntitheticNoise:
    """Draws z for the first half of the batch and -z for the second (antithetic variates): on this linear
    target the batch mean of the output is then (almost) exactly the sampler's mean, which removes the
    largest sampling noise of the measured W2. One generator for the batch: per-seed generators
    (SeededNoise) cost most of the time at B=2048, and per-seed independence is not measured here."""

    device = torch.device("cpu")

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def noise(self, like):
        z = torch.randn((like.shape[0] // 2,) + tuple(like.shape[1:]), generator=self.generator, dtype=like.dtype)
        return torch.cat([z, -z])


def target():
    lam = power_law_spectrum(SIZE, SIZE, variance=0.05)
    mean = torch.full((1, SIZE, SIZE), MEAN, dtype=torch.float64)
    power = SIZE * SIZE * lam + torch.fft.fft2(mean).abs().square()  # E|fft2 x|^2 of the target, exactly
    stats = ImageStatistics.from_moments(count=10**6, power_mean=power, mean=mean, sq_mean=lam.mean() + mean ** 2)
    return lam, stats


def measured_w2(x: torch.Tensor, lam: torch.Tensor) -> float:
    """W2 per pixel between the Gaussian fitted to the samples and the target, with the symmetries the
    sampler keeps on this target used to cut sampling noise (estimated error ~3%, not 10%):
    - stationary: the output mean is a constant image, so only the DC coefficient carries mean error;
    - the output variance of a mode depends on lam(k) only (target, filter and step sizes are functions of
      lam), so v is averaged over the modes of equal lam (k, -k, axis flips and swaps).
    Finite-batch bias removed: each of the H W unitary modes carries one real degree of freedom per
    antithetic pair, so Var(sqrt v_hat) = v / (2 dof); the antithetic batch mean carries no noise."""
    x = x.double()
    B, n = x.shape[0], SIZE * SIZE
    xbar = x.mean(0)
    v = torch.fft.fft2(x - xbar).abs().square().sum(0) / n / (B - 1)  # [1, H, W]
    orbit, inverse, size = torch.unique((lam.log() * 1e6).round(), return_inverse=True, return_counts=True)
    v = (torch.zeros(len(orbit), dtype=v.dtype).index_add_(0, inverse.flatten(), v.flatten()) / size)[inverse]
    dof = (B // 2 - 1) * size[inverse]
    w2_sq = ((v.sqrt() - lam.sqrt()).square() - v / (2 * dof)).sum()
    dc = torch.fft.fft2(xbar - MEAN)[..., 0, 0].abs().square() / n
    w2_sq = w2_sq + dc.sum()
    return float((w2_sq.clamp_min(0) / n).sqrt())


_SAMPLES = {}


def sample(settings, lam, stats):
    """BATCH draws of the PC sampler itself with these settings (the preconditioner as generate builds it);
    cached per settings within the run, since two tests measure the same samplers (the target is fixed)."""
    key = repr(settings)
    if key not in _SAMPLES:
        _SAMPLES[key] = _sample(settings, lam, stats)
    return _SAMPLES[key]


def _sample(settings, lam, stats):
    score = GaussianScore(MEAN, lam, SDE)
    return run_sampler(settings, score, SDE, (BATCH, 1, SIZE, SIZE), AntitheticNoise(), stats).x


def settings_for(steps, alpha, filters="freq", name="t"):
    """PC at `steps` with PDS `filters` at `alpha` (a number or a chooser), or vanilla for filters 'none'."""
    # Batch-mean Langevin norms: over 2048 samples they equal the expected norms the surrogate assumes.
    return PC(name=name, steps=steps, corrector=Langevin(step_size="batch"),
              pds=None if filters == "none" else PDS(filters=filters, alpha=alpha))


@pytest.mark.parametrize("n_steps,alpha", [(40, 5.0), (66, None), (66, 20.0)])
def test_predicted_error_matches_the_sampler_within_10_percent(n_steps, alpha):
    lam, stats = target()
    setting = settings_for(n_steps, 5.0 if alpha is None else alpha, "none" if alpha is None else "freq")
    surrogate = GaussianSurrogate.from_statistics(stats)
    torch.testing.assert_close(surrogate.lam, lam, rtol=1e-6, atol=1e-12)
    predicted = float(predict_w2(stats, SDE, settings_for(n_steps, 5.0), [alpha])[0])
    measured = measured_w2(sample(setting, lam, stats), lam)
    assert measured == pytest.approx(predicted, rel=0.10), (measured, predicted)


@pytest.mark.slow
@pytest.mark.parametrize("n_steps", [200, 100, 66, 40])
def test_auto_is_never_worse_than_vanilla_or_alpha_5(n_steps):
    lam, stats = target()
    choice = choose_alpha(stats, SDE, settings_for(n_steps, 5.0))
    chosen, info = resolve_alpha(settings_for(n_steps, Surrogate()), SDE, stats)  # the one resolution path
    assert info["alpha"] == choice.alpha
    w_vanilla = measured_w2(sample(settings_for(n_steps, 5.0, "none"), lam, stats), lam)
    w_five = measured_w2(sample(settings_for(n_steps, 5.0), lam, stats), lam)
    w_auto = {None: w_vanilla, 5.0: w_five}.get(choice.alpha) or measured_w2(sample(chosen, lam, stats), lam)
    # Sampling noise of the measured W2 is about 3% at this batch size (three seeds: 0.94-1.04 of the prediction).
    assert w_auto <= 1.05 * w_vanilla and w_auto <= 1.05 * w_five, (choice.alpha, w_auto, w_vanilla, w_five)


def test_resolve_alpha_gives_the_chosen_alpha_and_reports_it():
    lam, stats = target()
    auto = settings_for(66, Surrogate(), name="auto")
    choice = choose_alpha(stats, SDE, auto)
    assert choice.alpha is not None  # on a 1/f^2 target at 66 steps preconditioning is predicted to help
    score = GaussianScore(MEAN, lam, SDE)
    seeds = torch.arange(4)
    resolved, info = resolve_alpha(auto, SDE, stats)
    assert resolved.pds.alpha == choice.alpha and resolved.pds.filters == "freq"
    result = generate(resolved, score, SDE, seeds, (1, SIZE, SIZE), statistics=stats)
    fixed = generate(settings_for(66, choice.alpha, name="auto"), score, SDE, seeds, (1, SIZE, SIZE), statistics=stats)
    torch.testing.assert_close(result.x, fixed.x, rtol=0, atol=0)
    assert info["alpha"] == choice.alpha
    assert info["value"] == pytest.approx(choice.value)
    assert info["criterion"] == "predicted_w2"
    # A number passes through unchanged; the sampling package itself refuses "auto" and says what to call.
    assert resolve_alpha(resolved, SDE, stats) == (resolved, None)
    with pytest.raises(ValueError, match="resolve it first with pds_lightning.alpha.resolve_alpha"):
        generate(auto, score, SDE, seeds, (1, SIZE, SIZE), statistics=stats)


def test_a_chooser_needs_a_pc_sampler_and_statistics():
    with pytest.raises(ValueError, match="sampler 't' chooses alpha but no data statistics are available"):
        resolve_alpha(settings_for(10, Surrogate()), SDE, None)
    _, stats = target()
    with pytest.raises(ValueError, match="alpha choosers model a PC sampler with a predictor; sampler 't' has none"):
        resolve_alpha(settings_for(10, Surrogate()).replace(predictor=None), SDE, stats)
    with pytest.raises(ValueError, match="alpha choosers model the predictors ReverseDiffusion and EulerMaruyama, "
                                         "not AncestralSampling"):
        from pds_lightning.sampling import AncestralSampling
        resolve_alpha(settings_for(10, Surrogate()).replace(predictor=AncestralSampling()), SDE, stats)


def test_space_filter_of_a_stationary_target_changes_nothing_and_pooling_is_accurate():
    lam, stats = target()
    candidates = [None, 3.0, 8.0]
    freq = predict_w2(stats, SDE, settings_for(66, 5.0, "freq"), candidates)
    both = predict_w2(stats, SDE, settings_for(66, 5.0, "both"), candidates)
    torch.testing.assert_close(both, freq, rtol=1e-12, atol=0)  # constant sq_mean: S = 1 exactly
    # Non-stationary statistics (random images, 2 channels, 48 px): pooled cells vs every mode on its own.
    x = torch.rand(64, 2, 48, 48, generator=torch.Generator().manual_seed(0)) ** 3
    x[:, :, :8] *= 0.1  # a dark band: a space filter that is far from constant
    images = ImageStatistics((2, 48, 48)).update(x)
    pooled = predict_w2(images, SDE, settings_for(40, 5.0, "both"), candidates, max_modes=512)
    exact = predict_w2(images, SDE, settings_for(40, 5.0, "both"), candidates, max_modes=10**6)
    torch.testing.assert_close(pooled, exact, rtol=2e-3, atol=0)
    assert not torch.allclose(pooled[1], pooled[2], rtol=0.05)  # the candidates do differ


def test_choice_at_256_px_matches_the_unpooled_recursion():
    lam = power_law_spectrum(256, 256, variance=0.05, channels=3)
    mean = torch.full((3, 256, 256), MEAN, dtype=torch.float64)
    power = 256 * 256 * lam + torch.fft.fft2(mean).abs().square()
    stats = ImageStatistics.from_moments(1, power, mean, lam.mean() + mean ** 2)
    sde = VESDE(0.01, 378.0, 2000)
    settings = PC(steps=200, corrector=Langevin(snr=0.075), pds=PDS(filters="both", alpha=Surrogate()))
    choice = choose_alpha(stats, sde, settings)  # its time is in benchmarks/alpha_auto.py, not here
    # Every mode on its own (no pooling; one channel: the channels are identical) gives the same values.
    one = ImageStatistics.from_moments(1, power[:1], mean[:1], lam[:1].mean() + mean[:1] ** 2)
    exact = predict_w2(one, sde, settings, [12.0, 20.0], max_modes=10**6)
    assert choice.table[12.0] == pytest.approx(float(exact[0]), rel=2e-3)
    assert choice.table[20.0] == pytest.approx(float(exact[1]), rel=2e-3)
    assert exact[1] < exact[0] and choice.alpha >= 20  # at 200 steps milder preconditioning wins


def test_score_module_logs_the_choice_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch import Trainer
    from helpers import tiny_module, tiny_net

    module = tiny_module(tiny_net(ch_mult=[1]), statistics=True)
    logger = TensorBoardLogger(tmp_path)
    module.trainer = Trainer(logger=logger, enable_progress_bar=False, enable_checkpointing=False)
    logged = []
    logger.experiment.add_scalar = lambda tag, value, step: logged.append((tag, value))
    setting = PC(name="auto10", steps=10, pds=PDS(filters="both", alpha=Surrogate()))
    result = module.sample(setting, torch.arange(2))
    choice = result.info["alpha_auto"]
    assert logged == [("alpha_auto/auto10/alpha", choice["alpha"] or 0.0),
                      ("alpha_auto/auto10/predicted_w2", choice["value"])]


# ---- the Pilot chooser (measured on pilot samples of the model itself) ---------------------------------
def held_out_spectral_error(settings, score, stats, n=256) -> float:
    from pds_lightning.metrics import spectral_error

    x = generate(settings, score, SDE, torch.arange(n), (1, SIZE, SIZE), statistics=stats).x
    return spectral_error(x.clamp(0, 1), stats.power_mean.float())


@pytest.mark.parametrize("n_steps", [20, 200])
def test_pilot_choice_is_not_worse_than_vanilla_or_alpha_5_on_held_out_seeds(n_steps):
    from pds_lightning.alpha import PILOT_CANDIDATES, PILOT_SEED

    lam, stats = target()
    score = GaussianScore(MEAN, lam, SDE)
    auto = settings_for(n_steps, Pilot(16), name="pilot").replace(corrector=Langevin())
    chosen, choice = resolve_alpha(auto, SDE, stats, score_fn=score, shape=(1, SIZE, SIZE))
    assert choice["method"] == "pilot" and len(choice["table"]) == len(PILOT_CANDIDATES)
    assert choice["nfe"] == len(PILOT_CANDIDATES) * 16 * (2 * n_steps)
    # The table is the spectral error of exactly those pilot seeds with each candidate.
    from pds_lightning.metrics import spectral_error
    pilot = generate(auto.with_alpha(5.0), score, SDE, torch.arange(16) + PILOT_SEED, (1, SIZE, SIZE),
                     statistics=stats).x
    assert choice["table"]["5.0"] == pytest.approx(spectral_error(pilot.clamp(0, 1), stats.power_mean.float()))
    # Scored on other seeds (0..255), the choice holds up against both references.
    e_auto = held_out_spectral_error(chosen, score, stats)
    e_vanilla = held_out_spectral_error(auto.with_alpha(None), score, stats)
    e_five = held_out_spectral_error(auto.with_alpha(5.0), score, stats)
    assert e_auto <= min(e_vanilla, e_five) + 0.01, (choice["alpha"], e_auto, e_vanilla, e_five)
    if n_steps == 20:  # vanilla is far off at 20 steps on this target; the pilot must see it
        assert choice["alpha"] is not None and e_vanilla > 1.5 * e_auto


def test_pilot_needs_samples_and_the_model():
    with pytest.raises(ValueError, match="Pilot: samples must be an integer >= 2"):
        Pilot(samples=1)
    _, stats = target()
    with pytest.raises(ValueError, match="the Pilot alpha chooser samples the model; pass score_fn and shape"):
        resolve_alpha(settings_for(10, Pilot()), SDE, stats)


def test_score_module_runs_the_pilot_once_per_training_step():
    from helpers import tiny_module, tiny_net

    module = tiny_module(tiny_net(ch_mult=[1]), statistics=True)
    calls = []
    module.ema_net.register_forward_hook(lambda *_: calls.append(1))
    setting = PC(name="p", steps=5, pds=PDS(filters="both", alpha=Pilot(2)))
    first = module.sample(setting, torch.arange(2))
    pilot_calls = len(calls) - 10  # 5 PC steps = 10 network calls for the batch itself
    assert first.info["alpha_auto"]["nfe"] == pilot_calls * 2  # batched: one call serves both pilot samples
    calls.clear()
    second = module.sample(setting, torch.arange(2, 4))
    assert len(calls) == 10 and second.info["alpha_auto"] == first.info["alpha_auto"]


def test_the_alpha_cache_lives_in_alpha_one_choice_per_settings_and_step():
    """alpha.AlphaCache (ScoreModule's `_alpha_choices`): choose runs once per (settings, step); a new step drops
    the earlier steps' choices (the weights changed); log_alpha_choice writes alpha (0 = vanilla) and the criterion."""
    from helpers import tiny_module, tiny_net
    from pds_lightning.alpha import AlphaCache, log_alpha_choice

    assert type(tiny_module(tiny_net(ch_mult=[1]))._alpha_choices) is AlphaCache
    cache, made = AlphaCache(), []
    a, b = (PC(name=n, steps=10, pds=PDS(filters="both", alpha=Surrogate())) for n in ("a", "b"))
    choose = lambda s: made.append(s.name) or {"alpha": len(made)}  # noqa: E731
    assert [cache.get(a, 0, choose), cache.get(a, 0, choose), cache.get(b, 0, choose)] == [
        {"alpha": 1}, {"alpha": 1}, {"alpha": 2}]
    assert cache.get(a, 1, choose) == {"alpha": 3} and list(cache.choices) == [(repr(a), 1)]
    assert made == ["a", "b", "a"]

    class Scalars:  # the one call log_alpha_choice makes of a TensorBoard SummaryWriter
        def __init__(self):
            self.logged = []

        def add_scalar(self, tag, value, step):
            self.logged.append((tag, value, step))

    experiment = Scalars()
    log_alpha_choice(experiment, "auto10", {"alpha": None, "criterion": "predicted_w2", "value": 0.25}, 7)
    assert experiment.logged == [("alpha_auto/auto10/alpha", 0.0, 7), ("alpha_auto/auto10/predicted_w2", 0.25, 7)]
