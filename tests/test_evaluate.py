"""`evaluate_folder` / `pds-lightning evaluate`: spectral error always, FID / KID with a feature extractor."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from pds_lightning.evaluate import evaluate_folder, main
from pds_lightning.fileio import write_atomic
from pds_lightning.images import encode_png, to_uint8
from pds_lightning.metrics import frechet_distance, feature_moments, spectral_error
from pds_lightning.models.gaussian import GaussianScore, power_law_spectrum
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics
from pds_lightning.writer import sample_path
from helpers import TinyFeatures, frechet_reference, kid_reference

SIZE = 8


def gaussian(n, seed):
    lam = power_law_spectrum(SIZE, SIZE, variance=0.004, channels=3)
    x = GaussianScore(0.5, lam, VESDE()).sample(n, generator=torch.Generator().manual_seed(seed))
    return x.float().clamp(0, 1)


def write_samples(folder, images):
    """The SampleWriter layout; returns the images as decoded from the 8-bit files."""
    pixels = to_uint8(images)
    for seed, img in enumerate(pixels):
        path = sample_path(folder, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, encode_png(img))
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def reference_npz(tmp_path, images):
    path = tmp_path / "reference.npz"
    np.savez(path, images=to_uint8(images))
    return path, torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 255


def test_spectral_error_of_a_folder_against_data_statistics_and_sources(tmp_path):
    decoded = write_samples(tmp_path / "gauss", gaussian(40, seed=1))
    noise = write_samples(tmp_path / "noise", torch.rand(40, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2)))
    ref_path, ref = reference_npz(tmp_path, gaussian(60, seed=3))
    ref_power = ImageStatistics((3, SIZE, SIZE)).update(ref).power_mean

    from_source = evaluate_folder(tmp_path / "gauss", str(ref_path), batch_size=16)
    assert from_source["num_samples"] == 40 and from_source["num_reference"] == 60
    assert from_source["spectral_error"] == pytest.approx(spectral_error(decoded, ref_power), rel=1e-9)
    assert from_source["spectral_error"] < 0.1
    assert "fid" not in from_source

    stats = ImageStatistics((3, SIZE, SIZE)).update(ref)
    stats.save(tmp_path / "stats.pt")
    from_file = evaluate_folder(tmp_path / "gauss", tmp_path / "stats.pt")
    assert from_file["spectral_error"] == pytest.approx(from_source["spectral_error"], rel=1e-9)
    noisy = evaluate_folder(tmp_path / "noise", stats)
    assert noisy["spectral_error"] == pytest.approx(spectral_error(noise, ref_power), rel=1e-9)
    assert noisy["spectral_error"] > 0.5


def test_fid_of_a_folder_with_a_feature_extractor(tmp_path):
    images = gaussian(30, seed=4)
    decoded = write_samples(tmp_path / "same", images)
    shifted = write_samples(tmp_path / "shifted", (images + 0.15).clamp(0, 1))
    ref_path, _ = reference_npz(tmp_path, images)
    same = evaluate_folder(tmp_path / "same", ref_path, feature_extractor=TinyFeatures().eval())
    moved = evaluate_folder(tmp_path / "shifted", ref_path, feature_extractor=TinyFeatures().eval())
    assert abs(same["fid"]) < 1e-3
    f = TinyFeatures().eval()
    with torch.no_grad():
        expected = frechet_distance(*feature_moments(f(shifted)), *feature_moments(f(decoded)))
    assert moved["fid"] == pytest.approx(expected, rel=1e-4)
    assert moved["fid"] > max(100 * abs(same["fid"]), 1e-3)
    assert moved["kid"] > same["kid"]


def test_cli_prints_json_with_a_torchscript_inception_file(tmp_path, capsys):
    class Scripted(nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], dim=1) / 255.0

    weights = tmp_path / "inception.pt"
    torch.jit.script(Scripted()).save(str(weights))
    decoded = write_samples(tmp_path / "s", gaussian(12, seed=5))
    ref_path, ref = reference_npz(tmp_path, gaussian(12, seed=6))  # 12 and 12: KID's subsets are the whole sets
    out = tmp_path / "result.json"
    assert main([str(tmp_path / "s"), "--reference", str(ref_path), "--inception-weights", str(weights),
                 "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert set(printed) >= {"spectral_error", "fid", "kid", "num_samples"} and printed["num_samples"] == 12

    def features(x):  # the stand-in Inception: per-image mean and std of the [0, 255] pixels, over 255
        return torch.stack([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3))], dim=1)

    real, fake = features(ref), features(decoded)
    assert printed["fid"] == pytest.approx(frechet_reference(real, fake), rel=1e-4, abs=1e-9)
    assert printed["kid"] == pytest.approx(kid_reference(real, fake), rel=1e-3, abs=1e-7)


def test_cli_errors_are_one_line_and_non_zero(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "--reference", "mnist"]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_samples(tmp_path / "s", gaussian(4, seed=7))
    ImageStatistics((3, SIZE, SIZE)).update(gaussian(4, seed=8)).save(tmp_path / "stats.pt")
    assert main([str(tmp_path / "s"), "--reference", str(tmp_path / "stats.pt"),
                 "--feature-extractor", "test_evaluate:TinyFeatures", "--allow-custom-features"]) == 2
    assert "need reference images" in capsys.readouterr().err
    ImageStatistics((1, SIZE, SIZE)).update(gaussian(4, seed=8)[:, :1]).save(tmp_path / "grey.pt")
    assert main([str(tmp_path / "s"), "--reference", str(tmp_path / "grey.pt")]) == 2
    assert "samples' size and channels" in capsys.readouterr().err


def test_samples_of_mixed_shapes_are_refused(tmp_path):
    write_samples(tmp_path / "s", gaussian(2, seed=9))
    odd = to_uint8(torch.rand(1, 3, 4, 4))[0]
    write_atomic(sample_path(tmp_path / "s", 2), encode_png(odd))
    with pytest.raises(ValueError, match="evaluate one run's samples at a time"):
        evaluate_folder(tmp_path / "s", ImageStatistics((3, SIZE, SIZE)).update(gaussian(2, seed=1)))


# ---- untrusted options (issue 23 item 9) ------------------------------------------------------------------------
def evaluate_command(capsys, *args) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `pds-lightning evaluate ARGS` (the command's entry point, in this process)."""
    from pds_lightning.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["evaluate", *map(str, args)])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_feature_extractor_is_resolved_against_the_project_list(tmp_path, capsys):
    samples = tmp_path / "s"
    write_samples(samples, gaussian(4, seed=7))
    ref_path, _ = reference_npz(tmp_path, gaussian(4, seed=8))
    for name in ("os:abort", "os.system", "subprocess:Popen", "test_evaluate:TinyFeatures"):
        code, out, err = evaluate_command(capsys, samples, "--reference", ref_path, "--feature-extractor", name)
        assert code == 2 and out == "", err
        assert f"unknown feature extractor {name!r}; choose one of ['digits'], or pass --allow-custom-features" in err
    # opted in, a class path must still name an nn.Module subclass: os.abort is refused before it is called
    code, out, err = evaluate_command(capsys, samples, "--reference", ref_path, "--feature-extractor", "os:abort",
                                      "--allow-custom-features")
    assert code == 2 and "refused feature extractor 'os:abort': it is not a subclass of torch.nn.modules" in err
    code, out, err = evaluate_command(capsys, samples, "--reference", ref_path, "--feature-extractor",
                                      "test_evaluate:TinyFeatures", "--allow-custom-features")
    assert code == 0, err
    result = json.loads(out)
    expected = evaluate_folder(samples, str(ref_path), feature_extractor=TinyFeatures().eval())
    assert result["fid"] == pytest.approx(expected["fid"], rel=1e-9)


def test_digits_name_the_project_features():
    from pds_lightning.evaluate import feature_module
    from pds_lightning.features import DigitFeatures

    assert type(feature_module("digits")) is DigitFeatures
    assert type(feature_module("pds_lightning.features:DigitFeatures")) is DigitFeatures


def test_no_reference_images_is_an_error_not_infinity(tmp_path, capsys):
    samples = tmp_path / "s"
    write_samples(samples, gaussian(4, seed=7))
    ref_path, _ = reference_npz(tmp_path, gaussian(4, seed=8))
    code, out, err = evaluate_command(capsys, samples, "--reference", ref_path, "--num-reference", "0")
    assert code == 2 and out == "" and "--num-reference: must be at least 1" in err
    ImageStatistics((3, SIZE, SIZE)).save(tmp_path / "empty.pt")  # statistics of no images
    code, out, err = evaluate_command(capsys, samples, "--reference", tmp_path / "empty.pt", "--output",
                                      tmp_path / "r.json")
    assert code == 2 and out == "" and not (tmp_path / "r.json").exists()
    assert f"the reference {tmp_path / 'empty.pt'} holds no images (count 0)" in err


def test_a_non_finite_result_is_refused_not_written_as_invalid_json(tmp_path, capsys):
    """A reference whose spectrum is zero beyond DC (constant images) makes the spectral error infinite."""
    samples = tmp_path / "s"
    write_samples(samples, gaussian(4, seed=7))
    stats = ImageStatistics((3, SIZE, SIZE)).update(torch.zeros(2, 3, SIZE, SIZE))
    stats.save(tmp_path / "black.pt")
    code, out, err = evaluate_command(capsys, samples, "--reference", tmp_path / "black.pt", "--output",
                                      tmp_path / "r.json")
    assert code == 2 and out == "" and not (tmp_path / "r.json").exists()
    assert "spectral_error = " in err and "not a number JSON can hold" in err


def test_output_never_replaces_a_sample_and_an_existing_file_only_with_force(tmp_path, capsys):
    """issue 31 item 14: `--output samples/000/000000.png` replaced a sample PNG with the JSON result."""
    samples = tmp_path / "s"
    write_samples(samples, gaussian(4, seed=7))
    ImageStatistics((3, SIZE, SIZE)).update(gaussian(4, seed=8)).save(tmp_path / "stats.pt")
    png, before = sample_path(samples, 0), sample_path(samples, 0).read_bytes()
    code, out, err = evaluate_command(capsys, samples, "--reference", tmp_path / "stats.pt", "--output", png, "--force")
    assert code == 2 and out == "" and err == (f"pds-lightning evaluate: error: --output {png} is a file of the input "
                                               f"folder {samples}; writing it would replace an input: give another "
                                               "output path\n")
    assert png.read_bytes() == before
    result = tmp_path / "r.json"
    result.write_text("an earlier result")
    code, out, err = evaluate_command(capsys, samples, "--reference", tmp_path / "stats.pt", "--output", result)
    assert code == 2 and out == "" and err == (f"pds-lightning evaluate: error: --output {result} exists; pass --force "
                                               "to replace it or give another output path\n")
    assert result.read_text() == "an earlier result"
    code, out, _ = evaluate_command(capsys, samples, "--reference", tmp_path / "stats.pt", "--output", result, "--force")
    assert code == 0 and json.loads(result.read_text()) == json.loads(out)
