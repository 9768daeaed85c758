"""GPU checks of the released NCSN++ configs (random weights): placement, multi-GPU predict, overheads, bf16, memory.

Run on a machine with CUDA, from the repository root:

    python -m benchmarks.gpu_check [--steps 10] [--batch 64] [--sizes 32 256 1024] [--output gpu_check.json]

1. placement: every parameter and buffer, the PDS filters and the samples are on cuda, and no op of a
   sampling run returns a CPU tensor of more than one element (a TorchFunctionMode watches every call);
2. predict on 1 vs 2 GPUs (when there are 2): `pds-lightning predict` twice, PNGs compared byte for byte;
3. time per sampler step against the bare network forward at 32 px: overhead % = sampler time / (NFE x
   forward time) - 1 (the SDE arithmetic, PDS FFTs, noise draws and norms);
4. float32 vs bf16 (autocast) samples/s at 32 and 256 px;
5. peak CUDA memory per sample (slope between batch 1 and 4) at 32, 256 and 1024 px, float32 and bf16.
On a machine without CUDA it exits with status 2 and says so (`--allow-cpu` runs the same code on the CPU,
small, to check the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import yaml
from torch.overrides import TorchFunctionMode

from pds_lightning.models import NCSNpp
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PC, PDS
from pds_lightning.sde import SubVPSDE, VESDE, VPSDE
from pds_lightning.statistics import ImageStatistics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {32: "ve_cifar10_ncsnpp_continuous", 256: "ve_celebahq_256_ncsnpp_continuous",
           1024: "ve_ffhq_ncsnpp_continuous"}
SDES = {"VESDE": VESDE, "VPSDE": VPSDE, "SubVPSDE": SubVPSDE}


def build(size: int, device: torch.device) -> ScoreModule:
    """The released config's ScoreModule at `size` px with random weights and statistics of random images."""
    model = yaml.safe_load((ROOT / "configs" / "score_sde" / f"{CONFIGS[size]}.yaml").read_text())["model"]
    net = NCSNpp(**model["net"]["init_args"])
    sde = SDES[model["sde"]["class_path"].rpartition(".")[2]](**model["sde"]["init_args"])
    c = net.num_channels
    module = ScoreModule(net, sde, image_size=size, num_channels=c).to(device).eval()
    g = torch.Generator().manual_seed(0)
    module.set_statistics(ImageStatistics((c, size, size)).update(torch.rand(8, c, size, size, generator=g)))
    return module.to(device)


def sampler(steps: int) -> PC:
    return PC(name="pds", steps=steps, pds=PDS(filters="both", alpha=5.0))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CpuWatch(TorchFunctionMode):
    """Names every torch call that returns a CPU tensor of more than one element."""

    def __init__(self):
        super().__init__()
        self.on_cpu: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(o, torch.Tensor) and o.device.type == "cpu" and o.numel() > 1:
                self.on_cpu.add(getattr(func, "__name__", str(func)))
        return out


def check_placement(device: torch.device, steps: int) -> dict:
    module = build(32, device)
    off = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.device.type != device.type]
    pre = sampler(steps).pds.preconditioner(module.data_statistics).to(device)
    off += [f"preconditioner.{n}" for n, t in pre.named_buffers() if t.device.type != device.type]
    watch = CpuWatch()
    with watch:
        x = module.sample(sampler(steps), torch.arange(4, device=device)).x
    if x.device.type != device.type:
        off.append("samples")
    return {"ok": not off and not watch.on_cpu, "not_on_device": off, "ops_returning_cpu_tensors": sorted(watch.on_cpu)}


def check_multi_gpu_predict(steps: int) -> dict:
    """`pds-lightning predict` of a random-weight demo checkpoint on 1 and 2 GPUs; PNG bytes compared."""
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s); needs 2"}
    from pds_lightning.cli import cli_main

    with tempfile.TemporaryDirectory() as tmp:
        cli = cli_main(["--config", str(ROOT / "configs/demo.yaml"), "--trainer.logger", "false"], run=False)
        ckpt = Path(tmp) / "random.ckpt"
        import lightning as L
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, max_steps=0, enable_checkpointing=False)
        trainer.strategy.connect(cli.model)
        trainer.save_checkpoint(ckpt)
        outputs = {}
        for n in (1, 2):
            out = Path(tmp) / f"p{n}"
            cmd = [sys.executable, "-m", "pds_lightning.cli", "predict", "--config", "configs/demo.yaml",
                   "--ckpt_path", str(ckpt), "--trainer.logger", "false", "--trainer.accelerator", "gpu",
                   "--trainer.devices", str(n), "--trainer.strategy", "ddp" if n > 1 else "auto",
                   "--data.predict.seeds", "0-15", "--model.sampler.steps", str(steps),
                   "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter", "--trainer.callbacks.output_dir",
                   str(out)]
            run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if run.returncode:
                return {"ok": False, "error": f"{n} GPU(s): " + run.stderr.strip().splitlines()[-1]}
            outputs[n] = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*.png"))}
        same = outputs[1] == outputs[2] and len(outputs[1]) == 16
        return {"ok": same, "pngs": len(outputs[1]), "byte_identical": outputs[1] == outputs[2]}


def seconds(fn, device: torch.device, repeats: int = 3) -> float:
    """Median wall time of fn() after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def sampler_overhead(device: torch.device, steps: int, batch: int) -> dict:
    module = build(32, device)
    net, seeds = module.ema_net, torch.arange(batch, device=device)
    x = torch.rand(batch, *module.image_shape, device=device)
    labels = torch.full((batch,), 1.0, device=device)
    forward = seconds(lambda: net(x, labels), device)
    nfe = module.sample(sampler(steps), seeds).nfe
    sample = seconds(lambda: module.sample(sampler(steps), seeds), device)
    return {"batch": batch, "steps": steps, "nfe": nfe, "forward_s": forward, "sample_s": sample,
            "per_step_s": sample / steps, "overhead_pct": 100 * (sample / (nfe * forward) - 1)}


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@torch.no_grad()
def throughput(device: torch.device, size: int, steps: int, batch: int) -> dict:
    module = build(size, device)
    seeds = torch.arange(batch, device=device)
    out = {}
    for name, bf16 in (("float32", False), ("bf16", True)):
        with autocast(device, bf16):
            out[f"{name}_samples_per_s"] = batch / seconds(lambda: module.sample(sampler(steps), seeds), device, 1)
    out["bf16_speedup"] = out["bf16_samples_per_s"] / out["float32_samples_per_s"]
    return out


@torch.no_grad()
def peak_memory(device: torch.device, size: int) -> dict:
    """Peak CUDA memory of a 2-step PDS sample at batch 1 and 4; per sample = the slope (MiB)."""
    if device.type != "cuda":
        return {"skipped": "CUDA only"}
    module = build(size, device)
    out = {"weights_mib": torch.cuda.memory_allocated(device) / 2 ** 20}
    for name, bf16 in (("float32", False), ("bf16", True)):
        peaks = {}
        for batch in (1, 4):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            with autocast(device, bf16):
                module.sample(sampler(2), torch.arange(batch, device=device))
            peaks[batch] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        out[f"{name}_peak_mib_batch1"] = peaks[1]
        out[f"{name}_mib_per_sample"] = (peaks[4] - peaks[1]) / 3
    del module
    torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="sampler steps in the timed runs")
    parser.add_argument("--batch", type=int, default=64, help="batch of the overhead and throughput runs")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(CONFIGS), choices=sorted(CONFIGS))
    parser.add_argument("--output", default=None, help="also write the JSON result here")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU (checks the script only)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: no CUDA device here; run it on a machine with a GPU (python -m benchmarks.gpu_check)",
              file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "gpus": torch.cuda.device_count()}
    result["placement"] = check_placement(device, 3)
    result["multi_gpu_predict"] = check_multi_gpu_predict(args.steps) if device.type == "cuda" else {"skipped": "CPU"}
    result["sampler_overhead_32px"] = sampler_overhead(device, args.steps, args.batch)
    result["throughput"] = {s: throughput(device, s, args.steps, args.batch if s <= 32 else max(1, args.batch // 8))
                            for s in args.sizes if s <= 256}
    result["peak_memory"] = {s: peak_memory(device, s) for s in args.sizes}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0 if result["placement"]["ok"] and result["multi_gpu_predict"].get("ok", True) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
