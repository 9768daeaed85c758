"""`pds-lightning evaluate` shows a progress bar per folder on stderr (images done / total, images/s), as fit and
predict do, and none with --quiet; the JSON result on stdout is the same either way."""

import json
import re

import pytest
import torch

from pds_lightning.cli import main
from pds_lightning.images import encode_png, to_uint8
from pds_lightning.fileio import write_atomic
from pds_lightning.writer import sample_path


def write_images(folder, n: int, seed: int) -> None:
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    for i, image in enumerate(to_uint8(x)):
        write_atomic(sample_path(folder, i), encode_png(image))


def evaluate(capsys, *args) -> tuple[str, str]:
    with pytest.raises(SystemExit) as done:
        main(["evaluate", *map(str, args)])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    return out.out, out.err


def bar_states(err: str, label: str) -> list[str]:
    """The successive states tqdm drew for `label` ('\\r' redraws a line, '\\n' ends it)."""
    return [part.strip() for part in re.split(r"[\r\n]", err) if part.strip().startswith(f"{label}:")]


def test_evaluate_shows_a_progress_bar_per_folder_and_none_when_quiet(tmp_path, capsys):
    samples, reference = tmp_path / "samples", tmp_path / "reference"
    write_images(samples, 5, seed=0)
    write_images(reference, 3, seed=1)
    args = (samples, "--reference", reference, "--fid", "off", "--batch-size", "2")
    out, err = evaluate(capsys, *args)
    for label, total in ((f"samples {samples}", 5), (f"reference {reference}", 3)):
        states = bar_states(err, label)
        assert states[0].startswith(f"{label}:   0%|") and f"| 0/{total} [" in states[0], err
        assert re.fullmatch(rf"{re.escape(label)}: 100%\|\S+\| {total}/{total} \[\d\d:\d\d<\d\d:\d\d, +"
                            r"[\d.]+(img/s|s/img)\]", states[-1]), states[-1]
    assert err.index(f"samples {samples}:") < err.index(f"reference {reference}:")
    quiet_out, quiet_err = evaluate(capsys, *args, "--quiet")
    assert quiet_err == ""
    assert json.loads(quiet_out) == json.loads(out) and json.loads(out)["num_samples"] == 5
