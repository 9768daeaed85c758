from pathlib import Path

import numpy as np
import pytest
import torch

from pds_lightning.preconditioner import (Preconditioner, filter_from_statistic, read_statistic,
                                          write_statistic)

FIXTURES = Path(__file__).parent / "fixtures"


def symmetric_filter(C, H, W, gen):
    """A positive filter with R(k) = R(-k), like one built from |fft2|^2 statistics."""
    r = torch.rand(C, H, W, generator=gen, dtype=torch.float64) + 0.5
    mirrored = torch.roll(torch.flip(r, dims=(-2, -1)), shifts=(1, 1), dims=(-2, -1))
    return (r + mirrored) / 2


def dense_M(R, S):
    """Dense per-channel matrix of M = Re F^-1 diag(R) F diag(S), with F the explicit 2-D DFT matrix."""
    C, H, W = R.shape
    FH = np.exp(-2j * np.pi * np.outer(np.arange(H), np.arange(H)) / H)
    FW = np.exp(-2j * np.pi * np.outer(np.arange(W), np.arange(W)) / W)
    F = np.kron(FH, FW)  # row-major flattening of [H, W]
    Finv = np.conj(F) / (H * W)
    return [np.real(Finv @ np.diag(R[c].reshape(-1)) @ F @ np.diag(S[c].reshape(-1))) for c in range(C)]


def complex_fft_formulation(x, R, S, transpose_too):
    """The official code: two complex 1-D FFTs per transform, real part taken at the end."""
    dft2d = lambda v: torch.fft.fft(torch.fft.fft(v, dim=2), dim=3)
    idft2d = lambda v: torch.fft.ifft(torch.fft.ifft(v, dim=2), dim=3)
    if transpose_too:
        return idft2d(R * dft2d(S.pow(2) * idft2d(R * dft2d(x)))).real
    return idft2d(dft2d(x * S) * R).real


@pytest.mark.parametrize("H,W", [(4, 5), (6, 4)])
def test_M_and_MMt_equal_dense_matrices(H, W):
    gen = torch.Generator().manual_seed(0)
    R = symmetric_filter(2, H, W, gen)
    S = torch.rand(2, H, W, generator=gen, dtype=torch.float64) + 0.5
    pre = Preconditioner(R, S)
    M = dense_M(pre.freq_filter.double().numpy(), pre.space_filter.double().numpy())
    v = torch.randn(3, 2, H, W, generator=gen, dtype=torch.float64)
    Mv, MMtv = pre.noise(v), pre.drift(v)
    assert Mv.dtype == torch.float64
    for c in range(2):
        flat = v[:, c].reshape(3, -1).numpy().T
        np.testing.assert_allclose(Mv[:, c].reshape(3, -1).numpy().T, M[c] @ flat, atol=1e-12)
        MMt = M[c] @ M[c].T
        np.testing.assert_allclose(MMtv[:, c].reshape(3, -1).numpy().T, MMt @ flat, atol=1e-12)
        # M M^T is symmetric positive definite for a symmetric R.
        assert np.linalg.eigvalsh((MMt + MMt.T) / 2).min() > 0


def test_rfft_path_equals_complex_fft_formulation():
    gen = torch.Generator().manual_seed(1)
    R = symmetric_filter(3, 8, 8, gen).float()
    S = torch.rand(3, 8, 8, generator=gen) + 0.5
    pre = Preconditioner(R, S)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    torch.testing.assert_close(pre.noise(x), complex_fft_formulation(x, R, S, False), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pre.drift(x), complex_fft_formulation(x, R, S, True), atol=1e-5, rtol=1e-5)
    assert pre.noise(x).dtype == torch.float32


def test_single_filters_and_identity():
    gen = torch.Generator().manual_seed(2)
    R = symmetric_filter(1, 4, 4, gen).float()
    S = torch.rand(1, 4, 4, generator=gen) + 0.5
    x = torch.randn(2, 1, 4, 4, generator=gen)
    ident = Preconditioner()
    assert ident.is_identity and ident.noise(x) is x and ident.drift(x) is x
    torch.testing.assert_close(Preconditioner(space_filter=S).noise(x), x * S)
    torch.testing.assert_close(Preconditioner(space_filter=S).drift(x), x * S ** 2)
    ones = torch.ones(1, 4, 4)
    torch.testing.assert_close(Preconditioner(R).noise(x), complex_fft_formulation(x, R, ones, False))
    torch.testing.assert_close(Preconditioner(R).drift(x), complex_fft_formulation(x, R, ones, True))


def test_filters_are_float32_buffers():
    R = torch.full((1, 4, 4), 2.0, dtype=torch.float64)
    pre = Preconditioner(R, R)
    assert pre.freq_filter.dtype == torch.float32 and pre.space_filter.dtype == torch.float32
    assert set(pre.state_dict()) == {"freq_filter", "space_filter"}
    assert not pre.is_identity


def test_fixture_statistics_give_official_filters():
    freq, space = read_statistic(FIXTURES / "pds_freq_stat.npy"), read_statistic(FIXTURES / "pds_space_stat.npy")
    assert freq.shape == (3, 16, 16) and freq.dtype == torch.float32
    parity = torch.load(FIXTURES / "pds_sampler_parity.pt", weights_only=True)
    assert torch.equal(freq, parity["freq_stat"]) and torch.equal(space, parity["space_stat"])
    for alpha in (2.0, 5.0, 8.0):
        for stat in (freq, space):
            m = stat.numpy().copy()
            m /= m.max()
            official = ((m + alpha - 1) / alpha) ** -1  # the official code's expression, float32
            np.testing.assert_allclose(filter_from_statistic(stat, alpha).numpy(), official, rtol=1e-6)
        pre = Preconditioner.from_statistics(freq, space, alpha)
        assert pre.freq_filter.min().item() == pytest.approx(1.0)
        assert pre.freq_filter.max().item() <= alpha / (alpha - 1) + 1e-6


def test_statistic_round_trip(tmp_path):
    stat = torch.rand(3, 5, 6) + 0.1
    path = tmp_path / "freq.npy"
    write_statistic(path, stat.double())
    assert np.load(path).dtype == np.float32
    assert torch.equal(read_statistic(path), stat)
    assert [p.name for p in tmp_path.iterdir()] == ["freq.npy"]  # no temp file left


def test_errors_are_clear():
    good = torch.rand(3, 8, 8) + 0.1
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        filter_from_statistic(torch.rand(8, 8), 5.0)
    with pytest.raises(ValueError, match="alpha"):
        filter_from_statistic(good, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        Preconditioner.from_statistics(good, None, alpha=0.5)
    bad = good.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        filter_from_statistic(bad, 5.0)
    with pytest.raises(ValueError, match="negative"):
        filter_from_statistic(good - 2.0, 5.0)
    with pytest.raises(ValueError, match="zero everywhere"):
        filter_from_statistic(torch.zeros(3, 8, 8), 5.0)
    with pytest.raises(ValueError, match="positive"):
        Preconditioner(space_filter=torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="same"):
        Preconditioner(torch.ones(3, 8, 8), torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="images are"):
        Preconditioner(space_filter=good).noise(torch.randn(1, 3, 4, 4))


def test_shifted_frequency_statistics_are_refused():
    freq = read_statistic(FIXTURES / "pds_freq_stat.npy")
    # Even size: an fft-shifted statistic stays k -> -k symmetric, but its peak leaves the DC.
    with pytest.raises(ValueError, match="fft-shifted"):
        Preconditioner.from_statistics(torch.fft.fftshift(freq, dim=(-2, -1)))
    # Odd size: the shifted filter is no longer symmetric under k -> -k.
    gen = torch.Generator().manual_seed(3)
    R = symmetric_filter(1, 5, 5, gen)
    Preconditioner(R)  # unshifted is accepted
    with pytest.raises(ValueError, match="symmetric.*fft-shifted"):
        Preconditioner(torch.fft.fftshift(R, dim=(-2, -1)))


@pytest.mark.parametrize("filters", ["freq", "space", "none"])
def test_gram_apply_is_the_matrix_function_of_m_m_transpose(filters):
    """sum_i f_i(B) x_i for B = M M^T equals V f(Lambda) V^T x_i from the dense eigendecomposition of B."""
    gen = torch.Generator().manual_seed(5)
    C, H, W = 2, 4, 6
    R = symmetric_filter(C, H, W, gen) if filters == "freq" else torch.ones(C, H, W, dtype=torch.float64)
    S = torch.rand(C, H, W, generator=gen, dtype=torch.float64) + 0.5 if filters == "space" else torch.ones_like(R)
    M = Preconditioner(R if filters == "freq" else None, S if filters == "space" else None)
    x, y = torch.randn(2, 3, C, H, W, generator=gen, dtype=torch.float64)
    f = lambda b: torch.exp(-0.3 * b)
    g = lambda b: torch.sqrt(-torch.expm1(-2 * b))
    got = M.gram_apply([(f, x), (g, y)])
    R32, S32 = R.float().double().numpy(), S.float().double().numpy()  # the buffers are float32
    for c, Mc in enumerate(dense_M(R32, S32)):
        lam, V = np.linalg.eigh(Mc @ Mc.T)
        fB, gB = ((V * fn(torch.from_numpy(lam)).numpy()) @ V.T for fn in (f, g))
        want = x[:, c].reshape(3, -1).numpy() @ fB.T + y[:, c].reshape(3, -1).numpy() @ gB.T
        np.testing.assert_allclose(got[:, c].reshape(3, -1).numpy(), want, rtol=0, atol=1e-10)


def test_gram_apply_refuses_both_filters():
    M = Preconditioner(torch.ones(1, 4, 4), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="with both PDS filters M M\\^T = C S\\^2 C is diagonal in none"):
        M.gram_apply([(lambda b: b, torch.zeros(1, 1, 4, 4))])
