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

from pds_lightning.module import ScoreModule, read_checkpoint
from pds_lightning.safetensors_io import save_checkpoint_weights


def export(checkpoint_path: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Write the .safetensors of a checkpoint (default: beside it, same name); returns its path."""
    checkpoint_path = Path(checkpoint_path)
    output = checkpoint_path.with_suffix(".safetensors") if output is None else Path(output)
    if output.suffix != ".safetensors":
        raise ValueError(f"output {output} must end in .safetensors (that suffix is how loaders recognise it)")
    if output.exists() and checkpoint_path.exists() and os.path.samefile(output, checkpoint_path):
        raise ValueError(f"output {output} is the input {checkpoint_path} (it is a .safetensors export already); "
                         "give --output another path")
    ScoreModule.load_from_checkpoint(checkpoint_path)  # refuses, in one line, what could not be loaded back
    return save_checkpoint_weights(read_checkpoint(checkpoint_path), output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint of fit or convert-* (.ckpt, or a .safetensors export)")
    parser.add_argument("--output", default=None, help="file to write (default: CHECKPOINT with .safetensors)")
    args = parser.parse_args(argv)
    print(f"wrote {export(args.checkpoint, args.output)}")
    return 0
