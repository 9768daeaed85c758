"""FID as papers report it: EDM / ADM `.npz` reference statistics (read, written atomically), FID from them
equal to FID from the images, the sample count beside every FID, and a one-line error when no Inception is
available. Features come from a TorchScript stand-in with 2048-d output (no download anywhere)."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from pds_lightning.callbacks import SamplingCallback
from pds_lightning.data import Augment, ImageDataModule, Images, Split, Stats
from pds_lightning.evaluate import main, write_reference_statistics
from pds_lightning.images import to_uint8
from pds_lightning.metrics import (FID_MIN_SAMPLES, FIDStatistics, InceptionUnavailableError, TorchScriptFeatures,
                                   make_feature_extractor)
from pds_lightning.sampling import PC, PDS
from helpers import CHANNELS, SIZE, GaussianModule, clean_env, cpu_trainer
from test_evaluate import gaussian, reference_npz, write_samples

DIM = 2048


class StandIn(nn.Module):
    """Inception's calling convention (pixels in [0, 255], `return_features=True`) with 2048-d features:
    a fixed random projection of the 3 x 8 x 8 pixels followed by tanh."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3 * SIZE * SIZE, DIM, generator=g) / 8.0)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.tanh((x / 255.0 - 0.5).flatten(1) @ self.w)


@pytest.fixture
def inception_file(tmp_path):
    path = tmp_path / "stand_in.pt"
    torch.jit.script(StandIn()).save(str(path))
    return path


def frechet_written_out(f_fake: torch.Tensor, mu_ref: torch.Tensor, sigma_ref: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), unbiased covariance, in float64 torch: tr (S1 S2)^(1/2)
    as the sum of the square roots of the eigenvalues of S1 S2 (real parts; negative round-off gives 0)."""
    f = f_fake.double()
    mu = f.mean(0)
    sigma = (f - mu).T @ (f - mu) / (f.shape[0] - 1)
    root = torch.linalg.eigvals(sigma @ sigma_ref).sqrt().real.sum()
    return float((mu - mu_ref).square().sum() + sigma.trace() + sigma_ref.trace() - 2 * root)


def test_npz_layout_is_the_edm_and_adm_one(tmp_path):
    g = torch.Generator().manual_seed(1)
    f = torch.randn(50, 4, generator=g, dtype=torch.float64)
    stats = FIDStatistics.from_features(f)
    stats.save(tmp_path / "ours.npz")
    with np.load(tmp_path / "ours.npz") as npz:  # what EDM's fid.py and ADM's evaluator read
        assert set(npz.files) == {"mu", "sigma", "num_images"} and int(npz["num_images"]) == 50
        assert npz["mu"].dtype == np.float64 and npz["sigma"].shape == (4, 4)
        np.testing.assert_allclose(npz["mu"], f.mean(0).numpy(), rtol=1e-12)
        np.testing.assert_allclose(npz["sigma"], np.cov(f.numpy(), rowvar=False), rtol=1e-10)
    np.savez(tmp_path / "edm.npz", mu=stats.mu.numpy(), sigma=stats.sigma.numpy())  # EDM: fid.py ref
    np.savez(tmp_path / "adm.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8), mu=stats.mu.numpy(),
             sigma=stats.sigma.numpy(), mu_s=np.zeros(3), sigma_s=np.eye(3))  # ADM reference batch
    for name in ("edm.npz", "adm.npz"):
        loaded = FIDStatistics.load(tmp_path / name)
        assert loaded.count is None
        torch.testing.assert_close(loaded.mu, stats.mu, rtol=0, atol=0)
        torch.testing.assert_close(loaded.sigma, stats.sigma, rtol=0, atol=0)
    np.savez(tmp_path / "images.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"no \['mu', 'sigma'\] array"):
        FIDStatistics.load(tmp_path / "images.npz")
    np.save(tmp_path / "pickle.npy", np.array([{"mu": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not an .npz"):
        FIDStatistics.load(tmp_path / "pickle.npy")


def test_fid_from_written_statistics_equals_fid_from_the_images(tmp_path, inception_file, capsys):
    decoded = write_samples(tmp_path / "s", gaussian(40, seed=11))
    ref_path, ref = reference_npz(tmp_path, gaussian(60, seed=12))
    stats_path = tmp_path / "ref_stats.npz"
    w = str(inception_file)
    assert main(["--write-reference-stats", str(stats_path), "--reference", str(ref_path),
                 "--inception-weights", w]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["num_images"] == 60 and written["feature_dim"] == DIM

    assert main([str(tmp_path / "s"), "--reference", str(ref_path), "--inception-weights", w]) == 0
    from_images = json.loads(capsys.readouterr().out)
    assert main([str(tmp_path / "s"), "--fid-reference", str(stats_path), "--inception-weights", w]) == 0
    out = capsys.readouterr()
    from_stats = json.loads(out.out)

    features = TorchScriptFeatures(inception_file)
    with torch.no_grad():
        f_ref, f_fake = features(ref).double(), features(decoded).double()
    mu_ref = f_ref.mean(0)
    sigma_ref = (f_ref - mu_ref).T @ (f_ref - mu_ref) / 59
    expected = frechet_written_out(f_fake, mu_ref, sigma_ref)
    assert expected > 1.0  # two different draws: a real distance, not zero
    # float64 throughout; the only differences are the summation orders of the moments (~1e-12 relative)
    assert from_images["fid"] == pytest.approx(expected, rel=1e-6)
    assert from_stats["fid"] == pytest.approx(expected, rel=1e-6)
    assert from_stats["fid"] == pytest.approx(from_images["fid"], rel=1e-8)
    assert from_stats["fid_num_samples"] == 40 and from_stats["fid_num_reference"] == 60
    assert from_stats["fid_reference"] == "statistics" and "kid" not in from_stats
    assert "spectral_error" not in from_stats and "kid" in from_images
    # fewer than 10k samples: a warning beside the number, on stderr and in the JSON
    assert from_stats["warnings"] == [f"FID over 40 samples (< {FID_MIN_SAMPLES}) is biased upwards and not "
                                      "comparable with published values, which use 50000"]
    assert "warning: FID over 40 samples" in out.err


def test_reference_statistics_are_written_atomically(tmp_path, inception_file):
    ref_path, _ = reference_npz(tmp_path, gaussian(20, seed=13))
    out = tmp_path / "ref.npz"
    out.write_bytes(b"old")

    class FailsOnSecondBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = TorchScriptFeatures(inception_file), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 3:  # 1: torchmetrics' probe, 2: first batch, 3: second batch
                raise RuntimeError("disk gone")
            return self.inner(x)

    with pytest.raises(RuntimeError, match="disk gone"):
        write_reference_statistics(str(ref_path), out, FailsOnSecondBatch(), batch_size=8)
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz", "reference.npz",
                                                                                         "stand_in.pt"]
    stats = write_reference_statistics(str(ref_path), out, TorchScriptFeatures(inception_file), batch_size=8)
    assert stats.count == 20 and FIDStatistics.load(out).count == 20


def test_statistics_of_another_feature_size_are_refused(tmp_path, inception_file, capsys):
    write_samples(tmp_path / "s", gaussian(4, seed=14))
    FIDStatistics(torch.zeros(6), torch.eye(6), 10).save(tmp_path / "six.npz")
    assert main([str(tmp_path / "s"), "--fid-reference", str(tmp_path / "six.npz"),
                 "--inception-weights", str(inception_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "6-d but the feature extractor gives 2048-d" in err


@pytest.mark.slow
def test_without_inception_weights_the_error_is_one_line_and_quick(tmp_path, monkeypatch):
    """No torch-fidelity here (or no cached weights and no network): FID asked for without --inception-weights
    fails in one line naming both remedies, in a subprocess bounded in time (nothing may hang on the network)."""
    write_samples(tmp_path / "s", gaussian(4, seed=15))
    FIDStatistics(torch.zeros(DIM), torch.eye(DIM), 10).save(tmp_path / "ref.npz")
    env = clean_env(TORCH_HOME=str(tmp_path / "torch_home"))  # an empty hub cache
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "pds_lightning.evaluate", str(tmp_path / "s"), "--fid-reference",
                          str(tmp_path / "ref.npz")], env=env, capture_output=True, text=True, timeout=240)
    assert time.monotonic() - start < 240
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "torch-fidelity" in lines[0] and "--inception-weights FILE" in lines[0]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(InceptionUnavailableError, match="--inception-weights FILE"):
        make_feature_extractor(standard="required")
    # 'if_cached' (evaluate's default without --fid-reference) never touches the network: no weights, no FID
    assert make_feature_extractor(standard="if_cached") is None


def test_sampling_callback_logs_fid_against_reference_statistics(tmp_path, inception_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from lightning.pytorch.loggers import TensorBoardLogger

    model = GaussianModule()
    train = model.target.sample(40, generator=torch.Generator().manual_seed(3)).float().clamp(0, 1)
    np.savez(tmp_path / "data.npz", images=to_uint8(train))
    reference = model.target.sample(80, generator=torch.Generator().manual_seed(4)).float().clamp(0, 1)
    features = TorchScriptFeatures(inception_file)
    with torch.no_grad():
        stats = FIDStatistics.from_features(features(reference))
    stats.save(tmp_path / "ref.npz")
    sampler = PC(name="pds", speed_up=4.0, pds=PDS(filters="both"))
    with pytest.warns(UserWarning, match="FID over 12 samples"):
        callback = SamplingCallback([sampler], num_samples=12, inception_weights=str(inception_file),
                                    fid_reference_stats=str(tmp_path / "ref.npz"))
    dm = ImageDataModule(source=str(tmp_path / "data.npz"), images=Images(size=SIZE, num_channels=CHANNELS),
                         augment=Augment(random_flip=False), split=Split(val_size=8),
                         stats=Stats(num_images=0, cache_dir=""), batch_size=4)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    cpu_trainer(tmp_path, logger=logger, callbacks=[callback], max_epochs=1, limit_train_batches=1,
                num_sanity_val_steps=0).fit(model, datamodule=dm)
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    [fid] = events.Scalars("val/fid@12/pds")
    assert not any(tag.startswith("val/kid") for tag in events.Tags()["scalars"])
    with torch.no_grad():
        fake = features(model.sample(sampler, torch.arange(12)).x)
    assert fid.value == pytest.approx(frechet_written_out(fake, stats.mu, stats.sigma), rel=1e-5)
