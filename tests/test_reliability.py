"""Reliability: faults must not lose work and bad input must not give silent garbage.

Every case goes through the `pds-lightning` command (`pds_lightning.cli.main`, in-process where a whole
process would only add its ~7 s import; as real processes where a process is what is under test: the
SIGKILL cases and one exit-status check). An error case asserts a non-zero exit, one line on stderr
naming the problem and the fix, and no partial output.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pds_lightning.fileio import this_host
from pds_lightning.writer import IDENTITY_KEYS, scan_written_seeds
from pds_lightning.cli import main
from helpers import clean_env, dead_pid, disk_full_on_write, save_png

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
SCRIPTS = ROOT / "tests" / "scripts"
SCORE_SDE_CKPT = ROOT / "tests" / "fixtures" / "ncsnpp_ve_tiny.checkpoint.pth"
SCORE_SDE_CONFIG = ROOT / "tests" / "fixtures" / "ncsnpp_ve_tiny.yaml"


def run_script(name: str, workdir: Path, *args) -> None:
    """Run a helper script in `workdir` (nothing lands in the repository)."""
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], env=clean_env(), cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def cli_error(capsys, *args) -> tuple[int, str]:
    """Run the command expecting failure; returns (exit status, the last stderr line)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return info.value.code, lines[-1] if lines else ""


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def contents(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in files_under(path)}


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    """tiny.yaml fit to 30 steps, SIGKILLed after its first last.ckpt and resumed with --ckpt_path last."""
    work = tmp_path_factory.mktemp("fit")
    run_script("kill_fit.py", work, TINY, work, 30, 0)
    return work


@pytest.fixture
def ckpt(fit_run):
    """A trained tiny checkpoint (the one the killed fit left)."""
    return fit_run / "killed_last.ckpt"


def predict_args(ckpt, out, *extra):
    return ["predict", "--config", TINY, "--ckpt_path", ckpt, "--trainer.logger", "false",
            "--data.predict.seeds", "0-3", "--data.predict.batch_size", "2",
            "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter", "--trainer.callbacks.output_dir", out, *extra]


# ---- 1. predict killed three times, then resumed -----------------------------------------------------------
@pytest.mark.slow
def test_predict_killed_three_times_resumes_to_the_uninterrupted_images(fit_run, tmp_path):
    n = 32  # seeds 0..n-1, batches of 2: three kills of at most ~2.5 batches each land mid-run
    run_script("kill_predict.py", tmp_path, TINY, fit_run / "killed_last.ckpt", tmp_path, f"0-{n - 1}", 3, 1234)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["clean_exit"] == 0 and report["resume_exit"] == 0
    assert [k["signal"] for k in report["kills"]] == [9] * 3, report  # every kill hit a running process
    on_disk = [k["on_disk"] for k in report["kills"]]
    assert on_disk == sorted(on_disk) and on_disk[-1] < n, report  # kills landed mid-run, work was kept
    # A PNG seen after one kill is never rewritten or lost later: each seed was written exactly once.
    assert report["rewritten_or_lost_at_end"] == [] and all(not k["rewritten_or_lost"] for k in report["kills"])
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    expected = [f"{s // 1000:03d}/{s:06d}.png" for s in range(n)]
    assert files_under(killed) == sorted(expected + ["manifest.json"])  # no temp file left by any kill
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["num_skipped_existing"] + manifest["num_written"] == n == manifest["num_on_disk"]
    for name in expected:
        with Image.open(killed / name) as im:
            im.verify()
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name


# ---- 2. fit killed and resumed from last.ckpt ----------------------------------------------------------------
@pytest.mark.slow
def test_fit_killed_resumes_from_last_checkpoint_with_its_state(fit_run):
    report = json.loads((fit_run / "report.json").read_text())
    assert report["killed_by"] == 9 and report["resume_exit"] == 0 and report["step_time_s"] > 0
    saved = torch.load(fit_run / "killed_last.ckpt", weights_only=True)
    restored = torch.load(fit_run / "restored.pt", weights_only=True)
    final = torch.load(fit_run / "final.pt", weights_only=True)
    step = saved["global_step"]
    assert 4 <= step < 30 and step % 2 == 0  # killed after the two timed checkpoints, well before the end
    assert restored["global_step"] == step and restored["ema_num_updates"] == step
    for name, value in saved["state_dict"].items():  # raw and EMA weights, EMA counter, statistics buffers
        assert torch.equal(restored["state_dict"][name], value), name
    # The resumed run was given stats_num_images 16: the checkpoint's statistics (32 images) win.
    assert float(saved["state_dict"]["stat_count"]) == 32 and restored["dm_stat_count"] == 32
    assert final["global_step"] == 30 and final["ema_num_updates"] == 30
    ema = [k for k in saved["state_dict"] if k.startswith("ema_net.") and saved["state_dict"][k].is_floating_point()]
    assert any(not torch.equal(final["state_dict"][k], saved["state_dict"][k]) for k in ema)  # training continued
    assert torch.equal(final["state_dict"]["stat_power_mean"], saved["state_dict"]["stat_power_mean"])


# ---- 3. config errors ------------------------------------------------------------------------------------------
CONFIG_ERRORS = {
    "unknown key": (["--model.no_such_key", "3"], 2, "unrecognized arguments: --model.no_such_key"),
    "wrong type": (["--model.optimizer.init_args.lr", "abc"], 2, "Got value: abc"),
    "image_size vs network": (["--data.images.size", "8"], 1, "model.net image_size=16 contradicts "
                                                              "data.images.size=8; give both the same value"),
    "sigma_max vs network": (["--model.sde.init_args.sigma_max", "20"], 1, "model.net sigma_max=16 contradicts "
                                                                          "model.sde sigma_max=20"),
    "alpha <= 1": (["--model.sampler.pds.alpha", "1.0"], 1, "alpha must be a finite number > 1"),
    "speed_up < 1 step": (["--model.sampler.steps", "null", "--model.sampler.speed_up", "200"], 1,
                          "speed_up=200.0 leaves int(100 / 200.0) = 0 steps; use speed_up <= 100"),
    "seed range": (["--data.predict.seeds", "3-x"], 1, "malformed seed range part '3-x'"),
    "predictor": (["--model.sampler.predictor", "heun"], 2, "model.sampler"),
    "corrector": (["--model.sampler.corrector", "ula"], 2, "model.sampler"),
    # issue 24: a field of another sampler is a parse error naming it; issue 23 item 12: snr nan / inf refused
    "foreign sampler key": (["--model.sampler.init_args.S_churn", "40"], 2, "Option 'S_churn' is not accepted"),
    "snr nan": (["--model.sampler.corrector.snr", ".nan"], 1, "snr must be a finite number > 0, got nan"),
    "snr inf": (["--model.sampler.corrector.snr", ".inf"], 1, "snr must be a finite number > 0, got inf"),
    # issue 31 item 6: step counts bounded before anything is allocated (10**8 steps grew to 21 GB)
    "steps 10**8": (["--model.sampler.steps", "100000000"], 1,
                    "pds_10: steps gives 100,000,000 steps, more than the 10,000,000 a run may take (each step "
                    "adds to the SDE's tables and costs a network evaluation; score_sde uses at most 2000); lower "
                    "steps (set"),
    "num_scales 10**12": (["--model.sde.init_args.num_scales", "1000000000000"], 1,
                          "num_scales gives 1,000,000,000,000 steps, more than the 10,000,000 a run may take"),
    "net num_scales 10**12": (["--model.net.init_args.num_scales", "1000000000000"], 1,
                              "model.net num_scales gives 1,000,000,000,000 steps, more than the 10,000,000 a run may "
                              "take"),
    "likelihood n_steps 10**9": (["--model.likelihood.n_steps", "1000000000"], 1,
                                 "likelihood n_steps gives 1,000,000,000 steps, more than the 10,000,000 a run may "
                                 "take (each step adds to the SDE's tables and costs a network evaluation; score_sde "
                                 "uses at most 2000); lower likelihood n_steps (set"),
    "speed_up 1e-9": (["--model.sampler.steps", "null", "--model.sampler.speed_up", "1e-9"], 1,
                      "speed_up=1e-09 (int(100 / 1e-09)) gives 100,000,000,000 steps, more than the 10,000,000 a "
                      "run may take (each step adds to the SDE's tables and costs a network evaluation; score_sde "
                      "uses at most 2000); raise speed_up to at least 1e-05"),
}


@pytest.mark.parametrize("case", CONFIG_ERRORS, ids=str)
def test_config_error_is_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra, code, message = CONFIG_ERRORS[case]
    status, line = cli_error(capsys, "fit", "--config", TINY, "--trainer.default_root_dir", tmp_path / "run",
                             "--data.stats.cache_dir", tmp_path / "stats", *extra)
    assert status == code and message in line, line
    assert files_under(tmp_path) == []


@pytest.mark.slow
def test_the_command_exits_non_zero_with_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pds_lightning.cli", "fit", "--config", str(TINY),
                           "--model.sampler.pds.alpha", "0.5"], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("pds-lightning: error: ")
    assert "PDS: alpha must be a finite number > 1 (official default 5; larger is closer to vanilla)" in errors[0]
    assert errors[0].endswith("got 0.5 (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)")
    assert "Traceback" not in proc.stderr and files_under(tmp_path) == []


# ---- 4. data errors through the command -----------------------------------------------------------------------
def make_folder(tmp_path: Path, case: str) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    if case == "empty":
        (folder / "notes.txt").write_text("no images")
    for i in range(12):
        if case != "empty":
            save_png(folder / f"{i:02d}.png", np.full((16, 16), 10 * i, np.uint8))
    if case == "truncated":
        data = (folder / "05.png").read_bytes()
        (folder / "05.png").write_bytes(data[: len(data) // 2])
    elif case == "mixed channels":
        save_png(folder / "05.png", np.zeros((16, 16, 3), np.uint8))
    elif case == "too small":
        save_png(folder / "05.png", np.zeros((12, 12), np.uint8))
    return folder


DATA_ERRORS = {
    "missing path": "is neither",
    "empty": "holds no png/jpg",
    "truncated": "05.png",
    "mixed channels": "05.png has 3 channel(s) but num_channels is 1; set `convert_channels: true`",
    "too small": "05.png is 12x12 px, smaller than the image size 16; set `allow_upscale: true`",
}


@pytest.mark.parametrize("case", DATA_ERRORS, ids=str)
def test_data_error_is_one_line_and_leaves_no_checkpoint(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "nowhere" if case == "missing path" else make_folder(tmp_path, case)
    status, line = cli_error(capsys, "fit", "--config", TINY, "--trainer.logger", "false", "--data.source", source,
                             "--data.images.convert_channels", "false", "--data.stats.num_images", "12",
                             "--data.split.val_size", "0", "--trainer.default_root_dir", tmp_path / "run",
                             "--data.stats.cache_dir", tmp_path / "stats")
    assert status == 1 and line.startswith("pds-lightning: error: ") and DATA_ERRORS[case] in line, line
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "stats").exists()


def test_nan_images_in_an_npz_are_refused_naming_the_file_and_index(tmp_path, capsys, monkeypatch):
    """Issue 31 item 5: two NaN images used to train a NaN model with exit status 0."""
    monkeypatch.chdir(tmp_path)
    images = np.random.default_rng(0).random((12, 16, 16), dtype=np.float32)
    images[3, 5, 5] = np.nan
    images[7, 0, 0] = np.inf
    np.savez(tmp_path / "nan.npz", images=images)
    status, line = cli_error(capsys, "fit", "--config", TINY, "--trainer.logger", "false", "--data.source",
                             tmp_path / "nan.npz", "--data.split.val_size", "0", "--data.stats.num_images", "12",
                             "--trainer.default_root_dir", tmp_path / "run", "--data.stats.cache_dir",
                             tmp_path / "stats")
    assert status == 1 and line == (f"pds-lightning: error: {tmp_path / 'nan.npz'}: image 3 holds NaN/Inf values (2 "
                                    "image(s) do: 3, 7); remove or repair them: float images must be finite values in "
                                    "[0, 1] (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)"), line
    assert files_under(tmp_path) == ["nan.npz"]  # no checkpoint, no statistics cache


def run_main(*args) -> tuple[int | None, str]:
    """(exit status, last stderr line) of the command in this process; status None when it returned (success)."""
    err = io.StringIO()
    status = None
    with contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_info:
            status = exit_info.code
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return status, lines[-1] if lines else ""


@pytest.fixture(scope="module")
def diverged_fit(tmp_path_factory):
    """tiny.yaml fit at lr 1e30 saving last.ckpt after every step: the loss turns NaN at global step 2.
    Returns (work folder, exit status, last stderr line)."""
    work = tmp_path_factory.mktemp("diverged")
    here = os.getcwd()
    os.chdir(work)
    try:
        status, line = run_main("fit", "--config", TINY, "--trainer.default_root_dir", work, "--trainer.logger", "false",
                                "--data.stats.cache_dir", work / "stats", "--model.optimizer.init_args.lr", "1e30",
                                "--trainer.max_steps", 6,
                                "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                                "--trainer.callbacks.dirpath", work / "ckpt", "--trainer.callbacks.save_last", "true",
                                "--trainer.callbacks.every_n_train_steps", 1)
    finally:
        os.chdir(here)
    return work, status, line


def test_a_non_finite_loss_stops_fit_naming_the_step_and_keeps_the_last_good_checkpoint(diverged_fit):
    """Issue 31 item 5: one isfinite per step stops fit before the NaN update; the last checkpoint stays finite."""
    work, status, line = diverged_fit
    assert status == 1 and line == (
        "pds-lightning: error: fit stopped: the training loss is nan at global step 2, before that step's update (the "
        "weights and the saved checkpoints are those of earlier steps); check the data for NaN/Inf, or lower "
        "model.optimizer's lr / raise its warmup, then resume with --ckpt_path last (set PDS_LIGHTNING_TRACEBACK=1 "
        "for the traceback)"), line
    assert files_under(work / "ckpt") == ["epoch=0-step=2.ckpt", "last.ckpt"]
    last = torch.load(work / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and int(last["state_dict"]["ema_num_updates"]) == 2
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("command", ["predict", "validate", "fit", "export"])
def test_nan_weights_are_named_by_every_entry_point(diverged_fit, tmp_path, command, monkeypatch):
    """Issue 31 item 5: NaN weights made validate, fit and export exit 0 and predict blame alpha / speed_up."""
    monkeypatch.chdir(tmp_path)
    state = torch.load(diverged_fit[0] / "ckpt" / "last.ckpt", weights_only=True)
    key = next(k for k in state["state_dict"] if k.startswith("ema_net.") and k.endswith(".bias"))
    state["state_dict"][key][:3] = float("nan")
    torch.save(state, tmp_path / "nan.ckpt")
    args = {"predict": predict_args(tmp_path / "nan.ckpt", tmp_path / "out"),
            "validate": ["validate", "--config", TINY, "--ckpt_path", tmp_path / "nan.ckpt", "--trainer.logger", "false",
                         "--data.stats.cache_dir", tmp_path / "stats"],
            "fit": ["fit", "--config", TINY, "--ckpt_path", tmp_path / "nan.ckpt", "--trainer.logger", "false",
                    "--trainer.max_steps", 4, "--trainer.default_root_dir", tmp_path / "run",
                    "--data.stats.cache_dir", tmp_path / "stats"],
            "export": ["export", tmp_path / "nan.ckpt", "--output", tmp_path / "nan.safetensors"]}[command]
    status, line = run_main(*args)
    assert status == 1 and line == (
        f"pds-lightning: error: checkpoint {tmp_path / 'nan.ckpt'}: parameter {key} holds 3 NaN values; a model with "
        "non-finite weights samples and trains only NaN: use an earlier checkpoint (one saved before the loss became "
        "non-finite) (set PDS_LIGHTNING_TRACEBACK=1 for the traceback)"), line
    assert [name for name in files_under(tmp_path) if not name.startswith("stats/")] == ["nan.ckpt"]


# ---- 5. checkpoint errors ----------------------------------------------------------------------------------------
class WritesMarker:
    """Unpickling this object runs `open(marker, "w")`, creating the file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_checkpoint_of_another_architecture_names_the_keys(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, line = cli_error(capsys, *predict_args(ckpt, tmp_path / "out", "--model.net.init_args.nf", "16"))
    assert status == 1 and "checkpoint does not fit this model" in line and "shape mismatches" in line
    assert "net.all_modules." in line and "use the config.yaml saved next to the checkpoint" in line
    status, line = cli_error(capsys, *predict_args(ckpt, tmp_path / "out", "--model.net.init_args.ch_mult", "[1]"))
    assert status == 1 and "unexpected keys" in line, line
    assert scan_written_seeds(tmp_path / "out") == []


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_with_the_fix(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    status, line = cli_error(capsys, *predict_args(tmp_path / "cut.ckpt", tmp_path / "out"))
    assert status == 1 and "cannot read checkpoint" in line and "truncated" in line and "copy it again" in line
    assert not (tmp_path / "out").exists() or scan_written_seeds(tmp_path / "out") == []


@pytest.mark.slow
def test_checkpoint_that_would_run_code_is_refused_unread(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = torch.load(ckpt, weights_only=True)
    evil["hyper_parameters"]["payload"] = WritesMarker(marker)
    torch.save(evil, tmp_path / "evil.ckpt")
    status, line = cli_error(capsys, *predict_args(tmp_path / "evil.ckpt", tmp_path / "out"))
    assert status == 1 and "refused unread" in line and "could run code" in line, line
    assert not marker.exists()
    # The same file through convert-score-sde is refused too (a .pth from the internet is the usual vector).
    score_sde = torch.load(SCORE_SDE_CKPT, weights_only=True)
    score_sde["step"] = WritesMarker(marker)
    torch.save(score_sde, tmp_path / "evil.pth")
    status, _ = cli_error(capsys, "convert-score-sde", tmp_path / "evil.pth", "--config", SCORE_SDE_CONFIG,
                          "--output", tmp_path / "out.ckpt")
    assert status != 0 and not marker.exists() and not (tmp_path / "out.ckpt").exists()
    # Control: the file is a working exploit, so the refusals above are what kept the marker away.
    with open(tmp_path / "evil.pth", "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_score_sde_checkpoint_without_ema_is_refused(tmp_path, capsys):
    ckpt = torch.load(SCORE_SDE_CKPT, weights_only=True)
    del ckpt["ema"]
    torch.save(ckpt, tmp_path / "no_ema.pth")
    status, line = cli_error(capsys, "convert-score-sde", tmp_path / "no_ema.pth", "--config", SCORE_SDE_CONFIG,
                             "--output", tmp_path / "out.ckpt")
    assert status == 2 and "no EMA weights" in line
    assert files_under(tmp_path) == ["no_ema.pth"]


# ---- 5b. checkpoints that are broken or not ours: one line from export and every entry point (issue 31 item 13) ----
@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """A whole pds_lightning checkpoint, cheap to make (the tiny score_sde model converted)."""
    from pds_lightning.convert import convert_score_sde

    return convert_score_sde(SCORE_SDE_CKPT, SCORE_SDE_CONFIG, tmp_path_factory.mktemp("converted") / "tiny.ckpt")


def broken_checkpoint(case: str, good: Path, path: Path) -> str:
    """Write the `case` checkpoint to `path`; returns the message expected for it."""
    if case == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return (f"cannot read checkpoint {path} (RuntimeError: PytorchStreamReader failed reading zip archive: "
                "failed finding central directory.")
    if case == "pickle payload":
        checkpoint = torch.load(good, weights_only=True)
        checkpoint["hyper_parameters"]["payload"] = WritesMarker(path.parent / "pwned")
        torch.save(checkpoint, path)
        return (f"checkpoint {path} was refused unread: it holds pickled objects other than tensors and plain "
                "containers (Weights only load failed.")
    torch.save({"epoch": 3, "optimizer_states": []} if case == "dict without state" else [1, 2], path)
    held = "a dict with keys ['epoch', 'optimizer_states']" if case == "dict without state" else "a list"
    return (f"{path} is not a pds_lightning checkpoint: it holds {held}, no 'state_dict' mapping; use a checkpoint "
            "of fit or convert-* (convert a score_sde checkpoint with `pds-lightning convert-score-sde` first) "
            "(set PDS_LIGHTNING_TRACEBACK=1 for the traceback)")


BROKEN = ["truncated", "pickle payload", "dict without state", "list"]


@pytest.mark.parametrize("case", BROKEN)
def test_export_of_a_broken_checkpoint_is_one_line(case, converted, tmp_path, capsys):
    expected = broken_checkpoint(case, converted, tmp_path / "bad.ckpt")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["export", str(tmp_path / "bad.ckpt")])
    lines = capsys.readouterr().err.splitlines()
    assert info.value.code == 1 and len(lines) == 1 and lines[0].startswith("pds-lightning: error: " + expected), lines
    assert files_under(tmp_path) == ["bad.ckpt"]  # no .safetensors, and the payload never ran (no pwned)


@pytest.mark.parametrize("command", ["predict", "validate", "fit"])
@pytest.mark.parametrize("case", ["dict without state", "list"])
def test_an_entry_point_refuses_a_checkpoint_that_is_not_ours_in_one_line(command, case, converted, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = broken_checkpoint(case, converted, tmp_path / "bad.ckpt")
    status, line = cli_error(capsys, command, "--config", TINY, "--ckpt_path", tmp_path / "bad.ckpt",
                             "--trainer.logger", "false", "--trainer.default_root_dir", tmp_path / "run",
                             "--data.stats.cache_dir", tmp_path / "stats")
    assert status == 1 and line == "pds-lightning: error: " + expected, line
    assert files_under(tmp_path) == ["bad.ckpt"]


def export_ok(*args) -> None:
    with pytest.raises(SystemExit) as info:  # extra commands end in sys.exit(their status)
        main(["export", *map(str, args)])
    assert info.value.code == 0


def test_export_of_a_safetensors_export_never_writes_over_it(converted, tmp_path, capsys, monkeypatch):
    from pds_lightning.safetensors_io import load_weights

    monkeypatch.chdir(tmp_path)
    export_ok(converted, "--output", "tiny.safetensors")
    before = (tmp_path / "tiny.safetensors").read_bytes()
    status, line = cli_error(capsys, "export", "tiny.safetensors")  # the default output is the input itself
    assert status == 1 and line == ("pds-lightning: error: --output tiny.safetensors is the input file "
                                    "tiny.safetensors; writing it would replace the input: give another output path "
                                    "(set PDS_LIGHTNING_TRACEBACK=1 for the traceback)"), line
    assert (tmp_path / "tiny.safetensors").read_bytes() == before
    export_ok("tiny.safetensors", "--output", "again.safetensors")  # to another path it exports the same
    (state, hparams), (again, again_hparams) = load_weights("tiny.safetensors"), load_weights("again.safetensors")
    assert hparams == again_hparams and set(state) == set(again)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_no_logger_drops_the_configs_learning_rate_monitor_with_a_warning(tmp_path, monkeypatch):
    """`--trainer.logger false` with a shipped config's LearningRateMonitor (which Lightning refuses at fit start
    with no logger): the monitor is dropped, with a warning naming both settings."""
    from pds_lightning.cli import cli_main

    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"LearningRateMonitor dropped: the run has no logger \(--trainer.logger "
                                         r"false\) for it to write to; give a logger to keep it"):
        cli = cli_main(["--config", str(ROOT / "configs" / "demo.yaml"), "--trainer.logger", "false"], run=False)
    assert cli.trainer.loggers == []
    assert [type(c).__name__ for c in cli.trainer.callbacks if "Monitor" in type(c).__name__] == []
    assert "SamplingCallback" in [type(c).__name__ for c in cli.trainer.callbacks]  # the others are kept


# ---- 6. numerical faults ----------------------------------------------------------------------------------------
def overflow_checkpoint(ckpt: Path, tmp_path: Path) -> Path:
    """The trained checkpoint with one EMA bias set to 3e38: finite (a NaN weight is refused on loading), but the
    network's activations overflow, so every score, hence every sample, turns NaN."""
    state = torch.load(ckpt, weights_only=True)
    bias = next(k for k in state["state_dict"] if k.startswith("ema_net.") and k.endswith(".bias"))
    state["state_dict"][bias][0] = 3e38
    torch.save(state, tmp_path / "overflow.ckpt")
    return tmp_path / "overflow.ckpt"


@pytest.mark.slow
def test_nan_during_sampling_is_reported_with_step_and_hint(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = overflow_checkpoint(ckpt, tmp_path)
    out = tmp_path / "out"
    status, line = cli_error(capsys, *predict_args(bad, out, "--model.sampler.check_finite_every", "4"))
    # Checked every 4 steps: the NaN of step 0 is seen at step index 3.
    assert status == 1 and "non-finite values (nan/inf) in the sample at step 3 of 10" in line, line
    assert "lower alpha" in line and "speed_up" in line
    assert files_under(out) == []  # no image, no manifest
    # With the check off, the writer still refuses to write NaN images.
    status, line = cli_error(capsys, *predict_args(bad, out, "--model.sampler.check_finite_every", "0"))
    assert status == 1 and "non-finite sample values for seeds 0-1; nothing was written" in line, line
    assert files_under(out) == []


# ---- 7. I/O faults ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unwritable_output_dir_is_one_line_before_sampling(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("a file where a folder should be")  # root ignores chmod; this cannot be written
    status, line = cli_error(capsys, *predict_args(ckpt, tmp_path / "a_file" / "out"))
    assert status == 1 and "is not writable" in line and "choose another output directory" in line, line


@pytest.mark.slow
def test_disk_full_midway_reports_written_seeds_and_resume_completes(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr(os, "write", disk_full_on_write(3))
    status, line = cli_error(capsys, *predict_args(ckpt, out))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert status == 1 and "writing seed 2" in line and "No space left" in line, line
    assert "had written 2 seeds before (0-1)" in line and "free disk space" in line
    assert files_under(out) == ["000/000000.png", "000/000001.png", "manifest.json"]  # no partial file
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    main([str(a) for a in predict_args(ckpt, out)])
    assert scan_written_seeds(out) == [0, 1, 2, 3]
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_written"], manifest["num_skipped_existing"]) == (2, 2)


def test_disk_full_while_writing_the_manifest_names_it_and_resume_completes(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    manifest = out / "manifest.json"
    # The manifest is written twice: before the first PNG (what made the samples) and at the end.
    monkeypatch.setattr(os, "write", disk_full_on_write(1, starting_with=b"{"))
    status, line = cli_error(capsys, *predict_args(ckpt, out))
    assert status == 1 and f"writing {manifest} failed: No space left on device" in line, line
    assert "had written 0 seeds before (none)" in line and "free disk space" in line
    assert files_under(out) == []  # no PNG without its record, no partial manifest
    monkeypatch.setattr(os, "write", disk_full_on_write(2, starting_with=b"{"))
    status, line = cli_error(capsys, *predict_args(ckpt, out))
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert status == 1 and f"writing {manifest} failed: No space left on device" in line, line
    assert "had written 4 seeds before (0-3)" in line and "rerun the same command" in line
    assert files_under(out) == ["000/000000.png", "000/000001.png", "000/000002.png", "000/000003.png",
                                "manifest.json"]
    assert json.loads(manifest.read_text())["complete"] is False  # the first record, whole
    main([str(a) for a in predict_args(ckpt, out)])
    record = json.loads(manifest.read_text())
    assert record["complete"] and (record["num_written"], record["num_skipped_existing"]) == (0, 4)
    assert [r["complete"] for r in record["earlier_runs"]] == [False]


# ---- 8. one output folder, one run --------------------------------------------------------------------------------
def test_output_dir_of_other_settings_or_checkpoint_is_refused_and_resume_keeps_the_record(ckpt, tmp_path, capsys,
                                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    main([str(a) for a in predict_args(ckpt, out)])  # seeds 0-3 at 10 steps, alpha 5
    before = contents(out)
    status, line = cli_error(capsys, *predict_args(ckpt, out, "--data.predict.seeds", "0-7", "--model.sampler.steps",
                                                   "2", "--model.sampler.pds.alpha", "3"))
    assert status == 1 and "holds the samples of another run" in line, line
    assert "settings.init_args.steps: 10 there -> 2 now" in line and "settings.init_args.pds.init_args.alpha: 5.0 there -> 3.0 now" in line
    assert "predict into a new output_dir" in line
    # Another checkpoint of the same config and step (one EMA weight nudged): same hyper-parameters, new weights.
    state = torch.load(ckpt, weights_only=True)
    name = next(k for k in state["state_dict"] if k.startswith("ema_net.") and k.endswith(".weight"))
    state["state_dict"][name] = state["state_dict"][name] * 1.001
    torch.save(state, tmp_path / "other.ckpt")
    status, line = cli_error(capsys, *predict_args(tmp_path / "other.ckpt", out, "--data.predict.seeds", "0-7"))
    assert status == 1 and "model.fingerprint:" in line and "settings." not in line, line
    assert contents(out) == before  # nothing written, the manifest untouched
    # The same model and settings resume: only the new seeds are sampled; the earlier run's record is kept.
    main([str(a) for a in predict_args(ckpt, out, "--data.predict.seeds", "0-5")])
    record = json.loads((out / "manifest.json").read_text())
    assert scan_written_seeds(out) == list(range(6)) and (record["num_written"], record["num_skipped_existing"]) == (2, 4)
    first = json.loads(before["manifest.json"])
    assert record["earlier_runs"] == [{k: v for k, v in first.items() if k != "earlier_runs" and k not in IDENTITY_KEYS}]
    assert record["model"] == first["model"] and record["model"]["fingerprint"].startswith("sha256:")
    assert all((out / n).read_bytes() == b for n, b in before.items() if n.endswith(".png"))


def test_output_dir_of_other_precision_or_compile_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """Issue 31 item 7: bf16-mixed (or a compiled network) changes the bytes of the same weights' samples, so a
    float32 folder is refused to it; the tiny config's untrained weights (seed_everything 0) are the model."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = ["predict", "--config", TINY, "--trainer.logger", "false", "--data.predict.seeds", "0-1",
            "--data.predict.batch_size", "2", "--model.sampler.pds", "null", "--model.sampler.steps", "2",
            "--trainer.callbacks+=pds_lightning.callbacks.SampleWriter", "--trainer.callbacks.output_dir", out]
    main([str(a) for a in args])
    before = contents(out)
    status, line = cli_error(capsys, *args, "--data.predict.seeds", "0-3", "--trainer.precision", "bf16-mixed")
    assert status == 1 and line.startswith("pds-lightning: error: ") and "predict into a new output_dir" in line
    assert 'holds the samples of another run (numerics.precision: "32-true" there -> "bf16-mixed" now)' in line, line
    status, line = cli_error(capsys, *args, "--data.predict.seeds", "0-3", "--model.compile", "true")
    assert status == 1 and "holds the samples of another run (numerics.compile: false there -> true now)" in line
    assert contents(out) == before


def test_concurrent_predicts_into_one_folder_keep_each_others_files(ckpt, tmp_path, monkeypatch):
    """Two real processes: the first is caught mid-write (its temp file complete, not yet renamed) while the
    second runs from start to end in the same folder; a dead writer's temp is cleaned up, the live one is not."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, str(SCRIPTS / "paused_predict.py"), str(tmp_path),
                              *map(str, predict_args(ckpt, out, "--data.predict.seeds", "0-1"))],
                             cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "paused").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "paused").exists(), first.stderr.read() if first.poll() is not None else "timeout"
        live = Path((tmp_path / "paused").read_text())
        stale = out / "000" / f".000002.png.{dead_pid()}@{this_host()}.0123abcd.tmp"
        stale.write_bytes(b"a killed writer's partial file")
        main([str(a) for a in predict_args(ckpt, out)])  # the second process: this one, seeds 0-3
        assert live.exists() and not stale.exists()
        second = contents(out)
        (tmp_path / "go").write_text("")
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert files_under(out) == ["000/000000.png", "000/000001.png", "000/000002.png", "000/000003.png",
                                "manifest.json"]  # no temp file left
    assert {n: b for n, b in contents(out).items() if n.endswith(".png")} == {
        n: b for n, b in second.items() if n.endswith(".png")}  # the first's late rename wrote the same bytes
    record = json.loads((out / "manifest.json").read_text())
    assert record["complete"] and record["num_on_disk"] == 4 and record["world_size"] == 1
    assert [r["complete"] for r in record["earlier_runs"]] == [True]  # the second run's record


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=lambda u: f"umask{u:03o}")
def test_predict_and_convert_write_files_the_umask_allows(ckpt, tmp_path, monkeypatch, umask):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        main([str(a) for a in predict_args(ckpt, out, "--data.predict.seeds", "0-1")])
        main(["convert-score-sde", str(SCORE_SDE_CKPT), "--config", str(SCORE_SDE_CONFIG),
              "--output", str(tmp_path / "c.ckpt")])
    except SystemExit as err:
        assert err.code in (0, None)
    finally:
        os.umask(old)
    modes = {name: (out / name).stat().st_mode & 0o777 for name in files_under(out)}
    modes["c.ckpt"] = (tmp_path / "c.ckpt").stat().st_mode & 0o777
    assert modes == {"000/000000.png": 0o666 & ~umask, "000/000001.png": 0o666 & ~umask,
                     "manifest.json": 0o666 & ~umask, "c.ckpt": 0o666 & ~umask}
    assert (out / "000").stat().st_mode & 0o777 == 0o777 & ~umask


# ---- 9. whole files or none (issue 31 item 4) ----------------------------------------------------------------------
def test_fit_on_a_full_disk_leaves_no_partial_checkpoint_and_names_it(tmp_path, capsys, monkeypatch):
    """The checkpoint's write fails half-way (ENOSPC): one line naming the checkpoint, no file of it left."""
    monkeypatch.chdir(tmp_path)
    source = make_folder(tmp_path, "ok")
    monkeypatch.setattr(os, "write", disk_full_on_write(1, starting_with=b"PK"))  # the first zip: the checkpoint
    status, line = cli_error(capsys, "fit", "--config", TINY, "--trainer.logger", "false", "--data.source", source,
                             "--data.stats.num_images", "8", "--data.split.val_size", "4", "--trainer.max_steps", "2",
                             "--trainer.val_check_interval", "2", "--trainer.default_root_dir", tmp_path / "run",
                             "--data.stats.cache_dir", "")  # no statistics file: the checkpoint is the first zip
    target = tmp_path / "run" / "checkpoints" / "epoch=0-step=2.ckpt"
    assert status == 1, line
    assert line.startswith(f"pds-lightning: error: [Errno 28] cannot write the checkpoint {target}: No space left on "
                           "device; nothing was written there: free disk space or choose a writable checkpoint "
                           "folder (--trainer.default_root_dir)"), line
    assert os.listdir(target.parent) == []  # neither the checkpoint nor its temp file
