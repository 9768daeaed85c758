"""W2 error of vanilla and PDS sampling on stationary Gaussian targets, exactly, versus step count.

Target: x0 ~ N(mu, C) per channel with C circulant, power spectrum lam ~ 1/(|f|^2 + f0^2) (f0 = 1/size),
mean 0.45 and per-pixel variance 0.05 (data in [0, 1]; the parity fixture's model, at 64/128/256 px).
Sampler: the official PDS PC sampler (reverse-diffusion predictor + Langevin corrector, noise removal)
with the official 256 px VE settings: sigma_min 0.01, sigma_max 378, num_scales 2000, snr 0.075,
N = int(2000 / speed_up) steps ending at eps = 1e-5 speed_up. Rows 'PDS alpha a' use the official PDS
predictor (M M^T on the whole drift, which does not keep p_t); rows 'PDS-consistent alpha a' use
`PDS(predictor='consistent')` (drift f - (g^2/2)(I + M M^T) score, which keeps p_t), same corrector.

The recursion lives in the library (pds_lightning.alpha.pc_output_moments / predict_w2, used by the
Surrogate alpha chooser); this script only tabulates it. Why it is exact: the score of the target is linear and diagonal in Fourier, and so is the preconditioner
(the frequency filter R built from the target's own statistic; the space filter of a stationary target
is constant, hence the identity). Every update then maps each Fourier mode k independently,
x_k <- c_k x_k + s_k z_k, so the output law is Gaussian with per-mode variances v_k propagated in closed
form, and W2^2 = |mean error|^2 + sum_k (sqrt(v_k) - sqrt(lam_k))^2 (commuting covariances).
One approximation, documented: the Langevin step uses the *expected* norms,
step = 2 a_t snr^2 E||M z||^2 / E||M M^T score||^2, which is what the per-sample (and batch-mean) norms
concentrate to in high dimension (relative fluctuation ~ 1/sqrt(H W)).
Reported: W2 per pixel = sqrt(W2^2 / (H W)).

Also timed: one application of M and of M M^T with rfft2 (this project) versus the official complex-FFT
formulation (two complex 1-D FFTs per transform), at 3x256x256 and 3x1024x1024.

Run: python -m benchmarks.gaussian_steps  (writes benchmarks/results/gaussian_steps.md)
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from pds_lightning.alpha import predict_w2
from pds_lightning.fileio import write_atomic
from pds_lightning.models.gaussian import power_law_spectrum
from pds_lightning.preconditioner import Preconditioner, filter_from_statistic
from pds_lightning.sampling import PC, PDS, Langevin
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics

SIZES = (64, 128, 256)
ALPHAS = (None, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0)  # None: vanilla
STEPS = (2000, 1000, 200, 100, 66, 40)
SPEED_UPS = {2000: 1, 1000: 2, 200: 10, 100: 20, 66: 30, 40: 50}  # int(2000 / s) = steps
MEAN, VARIANCE = 0.45, 0.05
SIGMA_MIN, SIGMA_MAX, NUM_SCALES, SNR = 0.01, 378.0, 2000, 0.075


def target(size: int) -> torch.Tensor:
    """Per-mode variances lam_k of the target (one channel; channels are identical)."""
    return power_law_spectrum(size, size, variance=VARIANCE)[0]


def freq_filter(lam: torch.Tensor, alpha: float) -> torch.Tensor:
    """The official frequency filter from the target's exact statistic log1p(E|fft2(x)|^2)."""
    return filter_from_statistic(exact_statistics(lam).freq_statistic()[:1], alpha)[0].double()


def exact_statistics(lam: torch.Tensor) -> ImageStatistics:
    """The target's exact moments (E|fft2 x|^2, mean, E x^2) as ImageStatistics, one channel."""
    H, W = lam.shape
    mean = torch.full((1, H, W), MEAN, dtype=torch.float64)
    power = H * W * lam[None] + torch.fft.fft2(mean).abs().square()
    return ImageStatistics.from_moments(1, power, mean, lam.mean() + mean ** 2)


def w2_table(lam: torch.Tensor, n_steps: int, pds_predictor: str = "official") -> list[float]:
    """Exact W2 per pixel of the PC sampler's output law for every alpha in ALPHAS (library recursion:
    pds_lightning.alpha.predict_w2, the moment propagation described above)."""
    sampler = PC(speed_up=SPEED_UPS[n_steps], corrector=Langevin(snr=SNR),
                 pds=PDS(filters="freq", predictor=pds_predictor))
    sde = VESDE(SIGMA_MIN, SIGMA_MAX, NUM_SCALES)
    return predict_w2(exact_statistics(lam), sde, sampler, ALPHAS).tolist()


def complex_fft_ops(x, R, S):
    """The official formulation of M x and M M^T x."""
    dft2d = lambda v: torch.fft.fft(torch.fft.fft(v, dim=2), dim=3)
    idft2d = lambda v: torch.fft.ifft(torch.fft.ifft(v, dim=2), dim=3)
    noise = idft2d(dft2d(x * S) * R).real
    drift = idft2d(R * dft2d(S.pow(2) * idft2d(R * dft2d(x)))).real
    return noise, drift


def time_call(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def operator_timings(device: str = "cpu") -> list[tuple[str, float, float]]:
    rows = []
    for size, repeats in ((256, 20), (1024, 3)):
        lam = target(size)
        R = freq_filter(lam, 5.0).float().expand(3, size, size).contiguous()
        S = torch.rand(3, size, size) * 0.2 + 1.0
        pre = Preconditioner(R, S).to(device)
        x = torch.randn(1, 3, size, size, device=device)
        Rd, Sd = R.to(device)[None], S.to(device)[None]
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        ours = time_call(lambda: (pre.noise(x), pre.drift(x), sync()), repeats)
        official = time_call(lambda: (complex_fft_ops(x, Rd, Sd), sync()), repeats)
        n_ours, d_ours = pre.noise(x), pre.drift(x)
        n_off, d_off = complex_fft_ops(x, Rd, Sd)
        assert torch.allclose(n_ours, n_off, atol=1e-4) and torch.allclose(d_ours, d_off, atol=1e-4)
        rows.append((f"3x{size}x{size}", ours * 1e3, official * 1e3))
    return rows


def main(out: Path = Path(__file__).parent / "results" / "gaussian_steps.md") -> str:
    lines = ["# W2 per pixel on stationary 1/f^2 Gaussian targets (exact, via moments)", "",
             "Generated by `python -m benchmarks.gaussian_steps`; method and the one approximation (expected",
             "norms in the Langevin step) in its docstring. VE sigma 0.01..378, num_scales 2000, snr 0.075,",
             "reverse diffusion + Langevin, noise removal; target mean 0.45, variance 0.05 per pixel.",
             "'PDS': the official predictor; 'PDS-consistent': `pds_predictor: consistent` (keeps p_t).",
             "Lower is better; **bold** = best of the column for that size.", ""]
    for size in SIZES:
        lam = target(size)
        columns = [w2_table(lam, n) for n in STEPS]
        table = {a: [col[i] for col in columns] for i, a in enumerate(ALPHAS)}
        consistent = [w2_table(lam, n, "consistent") for n in STEPS]
        table.update({("consistent", a): [col[i] for col in consistent] for i, a in enumerate(ALPHAS) if a})
        best = [min(row[j] for row in table.values()) for j in range(len(STEPS))]
        lines += [f"## {size}x{size}", "", "| sampler | " + " | ".join(f"{n} steps" for n in STEPS) + " |",
                  "|---|" + "---|" * len(STEPS)]
        for key, row in table.items():
            cells = [f"**{w:.4f}**" if w == best[j] else f"{w:.4f}" for j, w in enumerate(row)]
            name = ("vanilla" if key is None else f"PDS alpha {key:g}" if not isinstance(key, tuple)
                    else f"PDS-consistent alpha {key[1]:g}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
        print(f"{size}px done", file=sys.stderr)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines += ["## One operator application: M and M M^T together", "",
              f"Device: {device}, float32, batch 1, torch threads {torch.get_num_threads()}; best of 3.", "",
              "| shape | rfft2 (ms) | official complex FFT (ms) | ratio official / rfft |", "|---|---|---|---|"]
    for shape, ours, official in operator_timings(device):
        lines.append(f"| {shape} | {ours:.2f} | {official:.2f} | {official / ours:.2f} |")
    text = "\n".join(lines) + "\n"
    write_atomic(out, text.encode())
    return text


if __name__ == "__main__":
    print(main())
