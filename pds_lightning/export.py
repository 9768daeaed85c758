"""`pds-lightning export CHECKPOINT [--output FILE.safetensors] [--force]`: a pds_lightning checkpoint as .safetensors.

The export holds the module's tensors and the JSON that rebuilds it (`pds_lightning.safetensors_io`), so a
model can be shared without pickle; `ScoreModule.load_from_checkpoint("FILE.safetensors")` reads it back.
The checkpoint is loaded first (weights_only, class paths checked), so only a model that loads is exported.
The input is never written over, an existing file only with --force (`fileio.check_outputs`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import torch

from pds_lightning.fileio import check_outputs
from pds_lightning.module import ScoreModule
from pds_lightning.safetensors_io import save_checkpoint_weights


def export(checkpoint_path: str | os.PathLike, output: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write the .safetensors of a checkpoint (default: beside it, same name); returns its path. An output that
    is the checkpoint is refused, an existing one unless `force`."""
    checkpoint_path = Path(checkpoint_path)
    output = checkpoint_path.with_suffix(".safetensors") if output is None else Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"output {output} must end in .safetensors (that suffix is how loaders recognise it)")
    check_outputs([("--output", output)], [checkpoint_path], force)
    ScoreModule.load_from_checkpoint(checkpoint_path)  # refuses, in one line, what could not be loaded back
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    return save_checkpoint_weights(checkpoint, output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint of fit or convert-* (.ckpt)")
    parser.add_argument("--output", default=None, help="file to write (default: CHECKPOINT with .safetensors)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file (never the input)")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.checkpoint, args.output, args.force)}")
    return 0
