"""The shipped digit classifier: it classifies held-out digits, and its features separate what differs."""

import io

import pytest
import torch

from pds_lightning.features import DigitClassifier, DigitFeatures, load_digit_classifier, luminance
from pds_lightning.images import LUMA
from pds_lightning.metrics import feature_moments, frechet_distance

torch.set_num_threads(1)


def _digits():
    from benchmarks.digit_classifier import digit_splits, load_digits

    return digit_splits(), load_digits()


def test_shipped_weights_classify_held_out_digits():
    split, (images, labels) = _digits()
    net = load_digit_classifier()
    test = split["test"][:400]
    with torch.no_grad():
        acc = float((net(images[test]).argmax(1) == labels[test]).float().mean())
    assert acc >= 0.95
    assert set(split["test"].tolist()).isdisjoint(split["train"].tolist())
    assert set(split["reference"].tolist()).isdisjoint(split["train"].tolist() + split["test"].tolist())


def test_fd_digits_separates_classes_more_than_halves_of_one_set():
    split, (images, labels) = _digits()
    feats = DigitFeatures()
    x, y = images[split["test"]], labels[split["test"]]
    with torch.no_grad():
        f = feats(x)
    assert f.shape == (len(x), 32)
    # The embedded digits are sorted by label: halves must be drawn at random.
    order = torch.randperm(len(f), generator=torch.Generator().manual_seed(0))
    half = len(f) // 2
    same = frechet_distance(*feature_moments(f[order[:half]]), *feature_moments(f[order[half:]]))
    differ = frechet_distance(*feature_moments(f[y < 5]), *feature_moments(f[y >= 5]))
    assert 0 < same < differ / 5
    assert frechet_distance(*feature_moments(f), *feature_moments(f)) == pytest.approx(0.0, abs=1e-4)  # eigh round-off on a trace ~1e3


def test_rgb_input_is_reduced_by_bt601_luminance():
    rgb = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    gray = luminance(rgb)
    assert torch.allclose(gray[0, 0, 1, 2], sum(w * rgb[0, c, 1, 2] for c, w in enumerate(LUMA)))
    net = load_digit_classifier()
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(net.features(x), net.features(luminance(x)))


def test_bad_inputs_name_the_problem(tmp_path):
    net = DigitClassifier()
    with pytest.raises(ValueError, match="32x32"):
        net.features(torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"1 or 3"):
        luminance(torch.rand(1, 2, 32, 32))
    with pytest.raises(FileNotFoundError, match="python -m benchmarks.digit_classifier"):
        load_digit_classifier(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(1)}, buffer)
    bad.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="state_dict"):
        load_digit_classifier(bad)
