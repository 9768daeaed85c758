"""FID and KID written out from their definitions (numpy, float64), to check the library's values against."""

import numpy as np
import torch


def frechet_reference(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) with unbiased covariances; tr (S1 S2)^(1/2) as the
    sum of the square roots of the eigenvalues of S1 S2 (the FID paper's formula)."""
    a, b = f1.double().numpy(), f2.double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_trace = np.sqrt(np.linalg.eigvals(s1 @ s2).astype(complex)).real.sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root_trace)


def kid_reference(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3 over two sets of equal size (KID of one
    subset that is the whole set, so every random subset gives this value)."""
    x, y = real.double().numpy(), fake.double().numpy()
    m, d = x.shape
    assert y.shape[0] == m, (x.shape, y.shape)

    def k(u, v):
        return (u @ v.T / d + 1) ** 3

    kxx, kyy = k(x, x), k(y, y)
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * k(x, y).sum() / m ** 2)
