"""`pds-lightning export CHECKPOINT [--output FILE.safetensors]`: a pds_lightning checkpoint as .safetensors.

The export holds the module's tensors and the JSON that rebuilds it (`pds_lightning.safetensors_io`), so a
model can be shared without pickle; `ScoreModule.load_from_checkpoint("FILE.safetensors")` reads it back.
The checkpoint is loaded first (weights_only, class paths checked), so only a model that loads is exported.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import torch

from pds_lightning.module import ScoreModule
from pds_lightning.safetensors_io import save_checkpoint_weights


def export(checkpoint_path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the .safetensors of a checkpoint (default: beside it, same name); returns its path."""
    checkpoint_path = Path(checkpoint_path)
    output = checkpoint_path.with_suffix(".safetensors") if output is None else Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"output {output} must end in .safetensors (that suffix is how loaders recognise it)")
    ScoreModule.load_from_checkpoint(checkpoint_path)  # refuses, in one line, what could not be loaded back
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    return save_checkpoint_weights(checkpoint, output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning export", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("checkpoint", help="checkpoint of fit or convert-* (.ckpt)")
    parser.add_argument("--output", default=None, help="file to write (default: CHECKPOINT with .safetensors)")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.checkpoint, args.output)}")
    return 0
