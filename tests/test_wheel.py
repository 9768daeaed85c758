"""The wheel is the whole product: built, installed outside the source tree (offline, reusing this
interpreter's torch), and run from an empty folder with only what it ships. Also: every import of the
package is a declared dependency."""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from helpers import clean_env

# Every test here starts processes (CLI runs, launchers, pip): outside the fast subset.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def run(*args, cwd, env, timeout=300):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args} exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(environment whose PYTHONPATH is only the installed wheel, the target folder, an empty working folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist, target, work = tmp / "dist", tmp / "target", tmp / "work"
    work.mkdir()
    run("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist, ROOT, cwd=tmp,
        env=clean_env())
    wheels = sorted(dist.glob("pds_lightning-*.whl"))
    assert len(wheels) == 1, wheels
    run("-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", target, wheels[0], cwd=tmp, env=clean_env())
    env = clean_env(PYTHONPATH=str(target), OMP_NUM_THREADS="1")  # not tests/: the child sees the wheel only
    return env, target, work


def test_the_installed_wheel_runs_its_shipped_configs_from_an_empty_folder(installed):
    env, target, work = installed
    where = run("-c", "import pds_lightning.resources as r, pds_lightning.features as f; "
                "print(r.__file__); print(r.installed_from_wheel()); print(r.resource_dir('data')); "
                "print(f.DEFAULT_WEIGHTS.is_file())", cwd=work, env=env).split()
    assert where[0].startswith(str(target)) and where[1] == "True", where  # the wheel's copy, not the checkout
    assert where[2].startswith(str(target)) and where[3] == "True", where

    listed = run("-m", "pds_lightning", "configs", cwd=work, env=env)
    names = [line.split()[0] for line in listed.splitlines()]
    expected = sorted(p.relative_to(ROOT / "configs").with_suffix("").as_posix()
                      for p in (ROOT / "configs").rglob("*.yaml"))
    assert names == expected
    run("-m", "pds_lightning", "configs", "write", "demo", cwd=work, env=env)
    assert (work / "demo.yaml").read_bytes() == (ROOT / "configs" / "demo.yaml").read_bytes()

    # fit 2 steps of the shipped demo by name (the embedded MNIST and statistics from the wheel), then predict
    checkpoint_cb = ('[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
                     '{"dirpath": "ckpt", "save_last": true, "every_n_train_steps": 2}}]')
    run("-m", "pds_lightning", "fit", "--config", "demo", "--trainer.max_steps", "2", "--trainer.callbacks",
        checkpoint_cb, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.limit_val_batches", "0", "--data.batch_size", "4", "--data.stats.num_images", "16",
        "--data.stats.cache_dir", "", "--model.net.init_args.nf", "8", cwd=work, env=env)
    assert (work / "ckpt" / "last.ckpt").is_file()
    run("-m", "pds_lightning", "predict", "--config", "demo", "--ckpt_path", "ckpt/last.ckpt", "--model.net.init_args.nf",
        "8", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--model.sampler.steps", "4",
        "--data.predict.seeds", "0-2", "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter",
        "--trainer.callbacks.output_dir", "samples", cwd=work, env=env)
    assert sorted(p.name for p in (work / "samples").rglob("*.png")) == ["000000.png", "000001.png", "000002.png"]

    # the checkpoint loads in one call in the installed package and samples the same seeds byte for byte
    same = run("-c", "import sys, torch; from pds_lightning.module import ScoreModule; "
               "from pds_lightning.images import encode_png, to_uint8; from pds_lightning.writer import sample_path; "
               "m = ScoreModule.load_from_checkpoint('ckpt/last.ckpt'); "
               "m.sampler = m.sampler.replace(steps=4); "
               "x = m.generate_images(range(3)); "
               "print(all(sample_path('samples', s).read_bytes() == encode_png(i) for s, i in enumerate(to_uint8(x))))",
               cwd=work, env=env)
    assert same.split()[-1] == "True"


def test_the_installed_wheel_resolves_shipped_score_sde_configs_by_name(installed):
    env, target, work = installed
    # The tiny fixture by a shipped NAME: the name resolves inside the wheel and builds the released CIFAR-10
    # network, which the tiny checkpoint does not fit (one clear error naming the config).
    proc = subprocess.run([sys.executable, "-m", "pds_lightning", "convert-score-sde",
                           FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", "--config", "ve/cifar10_ncsnpp_continuous",
                           "--output", "wrong.ckpt"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "checkpoint does not match config ve/cifar10_ncsnpp_continuous" in proc.stderr
    assert not (work / "wrong.ckpt").exists()
    # The tiny fixture with its own config: converted by the wheel, loadable in one call there.
    run("-m", "pds_lightning", "convert-score-sde", FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", "--config",
        FIXTURES / "ncsnpp_ve_tiny.yaml", "--output", "tiny.ckpt", cwd=work, env=env)
    shape = run("-c", "from pds_lightning.module import ScoreModule; "
                "print(tuple(ScoreModule.load_from_checkpoint('tiny.ckpt').image_shape))", cwd=work, env=env)
    assert shape.strip().splitlines()[-1] == "(3, 16, 16)"
    converted = torch.load(work / "tiny.ckpt", weights_only=True)
    expected = torch.load(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", weights_only=True)
    assert torch.equal(converted["state_dict"]["net.all_modules.0.W"], expected["model"]["module.all_modules.0.W"])


# ---- dependencies ----------------------------------------------------------------------------------------------
def third_party_imports() -> set[str]:
    """Top-level names of every module the package imports (anywhere), minus the standard library and itself."""
    names = set()
    for path in (ROOT / "pds_lightning").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "pds_lightning"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_import_of_the_package_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # Required dependencies, plus optional extras (an optional import fails with a message naming its extra).
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    declared = {normalise(re.split(r"[\[<>=!~; ]", dep, maxsplit=1)[0]) for dep in deps}
    providers = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"torch", "lightning", "yaml", "numpy", "PIL"} <= imports  # the scan sees the package's imports
    missing = {name: providers.get(name) for name in imports
               if not {normalise(d) for d in providers.get(name, [name])} & declared}
    assert not missing, f"imported but not in pyproject.toml dependencies (import: distributions): {missing}"
