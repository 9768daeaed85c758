"""Mixed precision and compilation: the network runs under autocast, everything around it stays float32;
`ScoreModule(compile=...)` gives the eager scores and keeps the checkpoint keys.

The network is the exact score of N(0.5, 0.1^2 I) under a VE SDE, computed through a 3x3 convolution (an
identity kernel), so autocast really runs part of it in bf16 and the samples have a known target."""

import lightning as L
import pytest
import torch
from helpers import preconditioner_of
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC, PDS, EDMHeun, Langevin, ReverseDiffusion
from pds_lightning.sampling.noise import SeededNoise
from pds_lightning.sampling.step import StepContext
from pds_lightning.sde import VESDE
from pds_lightning.statistics import ImageStatistics

MEAN, STD, SIZE = 0.5, 0.1, 8


class GaussianNet(nn.Module):
    """VE-continuous network (labels = sigma): score (m - x) / (v + sigma^2) of N(m, v I), through a conv last,
    so that under autocast its output is bf16, as a real network's is."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0

    def forward(self, x, sigma):
        return self.conv((MEAN - x) / (STD ** 2 + sigma ** 2).reshape(-1, 1, 1, 1))


def gaussian_module(**kw) -> ScoreModule:
    module = ScoreModule(GaussianNet(), VESDE(0.01, 16.0, 100), image_size=SIZE, num_channels=1, warmup=0,
                         lr=1e-3, **kw)
    data = (MEAN + STD * torch.randn(200, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    module.set_statistics(ImageStatistics((1, SIZE, SIZE)).update(data))
    return module


def trainer(tmp_path, precision, **kw):
    return L.Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, precision=precision, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kw)


@pytest.mark.parametrize("sampler", [PC(name="pds", pds=PDS(filters="both", alpha=2.0)),
                                     EDMHeun(name="heun", steps=18)], ids=["pds", "heun"])
def test_bf16_mixed_predict_is_finite_and_close_to_float32(tmp_path, sampler):
    """Same seeds, `precision="bf16-mixed"` against "32-true": max |difference| < 5e-3 in [0, 1] pixels.

    Why 5e-3: bf16 keeps 8 mantissa bits, so the network's input and output are rounded by up to 2^-9 (~0.2%)
    relative; only the score carries that error (x, the SDE, the FFTs and the step sizes stay float32), and the
    sampler's reverse dynamics contract it: measured 1.3e-4 (PC, PDS) and 9.9e-4 (Heun). 5e-3 is ~1 uint8 level,
    so a PNG differs by at most one grey level; a bf16 sampler state would drift far more (it rounds x itself,
    ~2e-3 per step, over 100+ steps)."""
    outputs = {}
    for precision in ("32-true", "bf16-mixed"):
        module = gaussian_module(sampler=sampler)
        batches = trainer(tmp_path, precision).predict(module, DataLoader(torch.arange(8), batch_size=4))
        outputs[precision] = torch.cat([b["images"] for b in batches])
    x32, x16 = outputs["32-true"], outputs["bf16-mixed"]
    assert x16.dtype == torch.float32 and torch.isfinite(x16).all()
    assert (x16 - x32).abs().max() < 5e-3
    assert (x16 - x32).abs().max() > 0  # bf16 did run: the network's rounding shows
    assert abs(float(x32.mean()) - MEAN) < 0.03 and abs(float(x32.std()) - STD) < 0.03  # the target's moments


def test_bf16_mixed_fit_gives_a_finite_float32_loss(tmp_path):
    class Record(L.Callback):
        losses = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].detach())

    module = gaussian_module()
    before = module.net.conv.weight.detach().clone()
    data = (MEAN + STD * torch.randn(16, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    trainer(tmp_path, "bf16-mixed", max_steps=3, limit_val_batches=0, callbacks=[Record()]).fit(
        module, DataLoader(data, batch_size=4))
    assert len(Record.losses) == 3
    for loss in Record.losses:
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        # the exact score's DSM loss: E ||std * score + z||^2 per pixel is < 1 (the optimum's residual)
        assert 0 < float(loss) < 1.0
    assert module.net.conv.weight.dtype == torch.float32 and not torch.equal(module.net.conv.weight, before)


class DtypeProbe(TorchFunctionMode):
    """Records the floating dtype of every torch call's output, split into inside / outside the network."""

    def __init__(self):
        super().__init__()
        self.inside_net = False
        self.outside, self.inside = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and (o.is_floating_point() or o.is_complex()):
                (self.inside if self.inside_net else self.outside).append((getattr(func, "__name__", str(func)),
                                                                           o.dtype))
        return out


def test_one_pds_pc_step_under_autocast_keeps_x_ffts_and_step_sizes_float32():
    module = gaussian_module()
    probe = DtypeProbe()
    net_forward = module.net.forward

    def probed_forward(x, sigma):
        probe.inside_net = True
        try:
            return net_forward(x, sigma)
        finally:
            probe.inside_net = False

    module.net.forward = probed_forward
    score_fn = module.score_fn(ema=False)
    sde = module.sde
    sampler = PC(name="pds", pds=PDS(filters="both", alpha=2.0))
    preconditioner = preconditioner_of(sampler, module.data_statistics)
    ctx = StepContext(sde, score_fn, preconditioner, SeededNoise([0, 1, 2]))
    x = MEAN + torch.randn(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    t = torch.full((3,), 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16), probe:
        x, _ = Langevin(snr=0.16, steps_per_level=1).update(ctx, x, t)
        x, x_mean = ReverseDiffusion().update(ctx, x, t)
    assert x.dtype == x_mean.dtype == torch.float32
    assert ("conv2d", torch.bfloat16) in probe.inside  # autocast ran the network's conv in bf16
    names = {name for name, _ in probe.outside}
    # the FFTs, the Langevin norms and the step sizes (sqrt(2 step)) were all seen, in float32 / complex64
    assert {"fft_rfft2", "fft_irfft2", "linalg_vector_norm", "sqrt"} <= names, sorted(names)
    lowered = sorted({(n, d) for n, d in probe.outside if d not in (torch.float32, torch.complex64)})
    assert lowered == [], f"ops outside the network left float32: {lowered}"


def test_compiled_network_gives_the_eager_scores_and_keeps_checkpoint_keys(tmp_path):
    """torch.compile's wiring with backend 'aot_eager' (graph capture and AOT autograd, no C++ build):
    inductor compiles this tiny net on this 2-core CPU in ~140 s (scores equal to 4e-11), too slow for a test."""
    eager = gaussian_module()
    compiled = gaussian_module(compile={"backend": "aot_eager"})
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    with torch.no_grad():
        want = eager.score_fn()(x, t)
        got = compiled.score_fn()(x, t)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert type(compiled.score_fn().net).__name__ == "OptimizedModule"  # the compiled path ran
    assert list(compiled.state_dict()) == list(eager.state_dict())  # lazily compiled: same checkpoint keys
    # training goes through the compiled wrapper and updates the module's own parameters
    before = compiled.net.conv.weight.detach().clone()
    data = torch.rand(8, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    trainer(tmp_path, "32-true", max_steps=2, limit_val_batches=0).fit(compiled, DataLoader(data, batch_size=4))
    assert "net" in compiled._compiled and not torch.equal(compiled.net.conv.weight, before)
    with pytest.raises(ValueError, match="model.compile takes true/false"):
        gaussian_module(compile="yes")
