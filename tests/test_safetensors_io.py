""".safetensors weights: bit-exact round trips from convert-score-sde and export, and refusal of anything but
tensors plus the expected JSON."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pds_lightning.cli import main as cli_main
from pds_lightning.convert import convert_score_sde
from pds_lightning.export import export, main as export_main
from pds_lightning.module import ScoreModule
from pds_lightning.sampling import PDS
from pds_lightning.safetensors_io import FORMAT, HEADER, load_weights, save_weights
from helpers import disk_full_on_write

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """convert-score-sde of the tiny fixture with --safetensors (official statistics, so no buffer is zero)."""
    out = tmp_path_factory.mktemp("st") / "tiny.ckpt"
    convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", FIXTURES / "ncsnpp_ve_tiny.yaml", out,
                      FIXTURES / "pds_freq_stat.npy", FIXTURES / "pds_space_stat.npy", safetensors=True)
    return out


def assert_same_module(a: ScoreModule, b: ScoreModule) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    assert dict(a.hparams) == dict(b.hparams)
    assert a.sampler == b.sampler and type(a.sde) is type(b.sde) and a.sde.N == b.sde.N


def test_convert_writes_a_bit_exact_safetensors_beside_the_checkpoint(converted):
    state_dict, hparams = load_weights(converted.with_suffix(".safetensors"))
    ckpt = torch.load(converted, weights_only=True)
    assert state_dict.keys() == ckpt["state_dict"].keys()
    for k, v in ckpt["state_dict"].items():
        assert state_dict[k].dtype == v.dtype and torch.equal(state_dict[k], v), k
    assert hparams == ckpt["hyper_parameters"]
    assert float(state_dict["stat_count"]) == 1.0  # the statistics travel with the weights
    assert_same_module(ScoreModule.load_from_checkpoint(converted),
                       ScoreModule.load_from_checkpoint(converted.with_suffix(".safetensors")))


def test_export_round_trips_and_samples_identically(converted, tmp_path):
    out = export(converted, tmp_path / "shared.safetensors")
    a, b = ScoreModule.load_from_checkpoint(converted), ScoreModule.load_from_checkpoint(out)
    assert_same_module(a, b)
    settings = a.sampler.replace(steps=3, pds=PDS(filters="both", alpha=2.0))
    assert torch.equal(a.generate_images([0, 1], sampler=settings), b.generate_images([0, 1], sampler=settings))
    assert out.read_bytes() == converted.with_suffix(".safetensors").read_bytes()  # one file for one model


def test_export_command_writes_beside_the_checkpoint(converted, tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_bytes(converted.read_bytes())
    assert export_main([str(ckpt)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'm.safetensors'}"
    with pytest.raises(ValueError, match="must end in .safetensors"):
        export(ckpt, tmp_path / "m.bin")


def module_file(path: Path, header: dict[str, str] | None, tensors=None) -> Path:
    save_file(tensors or {"w": torch.zeros(2)}, str(path), metadata=header)
    return path


def body(**changes):
    data = {"format": FORMAT, "net": {"class_path": "torch.nn.Identity", "init_args": {}},
            "sde": {"class_path": "pds_lightning.sde.VESDE", "init_args": {}}, "hyper_parameters": {}}
    data.update(changes)
    return {HEADER: json.dumps(data)}


@pytest.mark.parametrize("header, message", [
    (None, r"metadata keys \[\], expected only 'pds_lightning'"),
    ({**body(), "extra": "1"}, r"metadata keys \['extra', 'pds_lightning'\]"),
    ({HEADER: "{not json"}, "metadata is not JSON"),
    ({HEADER: json.dumps({**json.loads(body()[HEADER]), "code": "x"})}, r"has keys \['code', 'format'"),
    (body(format="other/9"), "has format 'other/9'"),
    (body(net={"class_path": "torch.nn.Identity", "init_args": {}, "run": 1}), "net must be"),
    (body(hyper_parameters={"net": {}}), "belong at the top"),
])
def test_loading_refuses_unexpected_metadata(tmp_path, header, message):
    with pytest.raises(ValueError, match=message):
        load_weights(module_file(tmp_path / "m.safetensors", header))


def test_class_paths_are_checked_before_anything_runs(tmp_path):
    path = module_file(tmp_path / "m.safetensors", body(net={"class_path": "subprocess.Popen",
                                                             "init_args": {"args": ["touch", str(tmp_path / "ran")]}}))
    with pytest.raises(ValueError, match="refused model.net 'subprocess.Popen' unimported: it is outside the allow-list"):
        ScoreModule.load_from_checkpoint(path)
    assert not (tmp_path / "ran").exists()


def test_not_a_safetensors_file_and_non_json_values_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="cannot read .* as .safetensors"):
        load_weights(bad)
    with pytest.raises(FileNotFoundError, match=r"weights file .*missing.safetensors does not exist"):
        load_weights(tmp_path / "missing.safetensors")
    spec = {"class_path": "torch.nn.Identity", "init_args": {}}
    with pytest.raises(ValueError, match=r"metadata.hyper_parameters.lr is nan"):
        save_weights({"w": torch.zeros(1)}, {"net": spec, "sde": spec, "lr": float("nan")}, tmp_path / "n.safetensors")
    with pytest.raises(ValueError, match="net must be"):
        save_weights({"w": torch.zeros(1)}, {"net": None, "sde": spec}, tmp_path / "n.safetensors")
    assert not list(tmp_path.glob("n.safetensors*")) and not list(tmp_path.glob(".n.safetensors*"))


# ---- files: the umask's mode, whole or not at all, never over the input (issue 31 items 4, 10) --------------------
@pytest.mark.parametrize("umask", [0o022, 0o002], ids=lambda u: f"umask{u:03o}")
def test_export_and_convert_safetensors_get_the_mode_the_umask_allows(converted, tmp_path, umask):
    old = os.umask(umask)
    try:
        assert export_main([str(converted), "--output", str(tmp_path / "e.safetensors")]) == 0
        convert_score_sde(FIXTURES / "ncsnpp_ve_tiny.checkpoint.pth", FIXTURES / "ncsnpp_ve_tiny.yaml",
                          tmp_path / "c.ckpt", safetensors=True)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["e.safetensors", "c.ckpt", "c.safetensors"], 0o666 & ~umask)


def test_export_on_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(converted, tmp_path, capsys, monkeypatch):
    out = tmp_path / "shared.safetensors"
    monkeypatch.setattr(os, "write", disk_full_on_write(1, starting_with=b""))
    with pytest.raises(SystemExit) as done:
        cli_main(["export", str(converted), "--output", str(out)])
    assert done.value.code == 1
    assert capsys.readouterr().err == (f"pds-lightning: error: [Errno 28] No space left on device: '{out}' "
                                       "(set PDS_LIGHTNING_TRACEBACK=1 for the traceback)\n")
    assert list(tmp_path.iterdir()) == []


def test_export_never_writes_over_its_input_and_over_a_file_only_with_force(converted, tmp_path, capsys):
    shared = export(converted, tmp_path / "m.safetensors")
    original = shared.read_bytes()
    with pytest.raises(FileExistsError, match=f"--output {shared} is the input file {shared}; writing it would "
                                              "replace the input"):
        export(shared, force=True)  # default output: the input's name with .safetensors, the input itself
    (tmp_path / "old.safetensors").write_text("mine")
    with pytest.raises(SystemExit) as done:
        cli_main(["export", str(converted), "--output", str(tmp_path / "old.safetensors")])
    assert done.value.code == 1 and capsys.readouterr().err.startswith(
        f"pds-lightning: error: --output {tmp_path / 'old.safetensors'} exists; pass --force to replace it")
    assert (tmp_path / "old.safetensors").read_text() == "mine"
    assert export_main([str(converted), "--output", str(tmp_path / "old.safetensors"), "--force"]) == 0
    assert (tmp_path / "old.safetensors").read_bytes() == shared.read_bytes() == original
