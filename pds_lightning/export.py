"""`pds-lightning export CHECKPOINT [--output FILE.safetensors] [--force]`: a pds_lightning checkpoint as .safetensors;
`pds-lightning export CHECKPOINT OUT_DIR --format diffusers [--force]`: as a diffusers ScoreSdeVePipeline folder.

The export holds the module's tensors and the JSON that rebuilds it (`pds_lightning.safetensors_io`), so a
model can be shared without pickle; `ScoreModule.load_from_checkpoint("FILE.safetensors")` reads it back.
The checkpoint is loaded first (weights_only, class paths checked), so only a model that loads is exported.
The diffusers folder holds the EMA weights (the sampling weights) of an NCSN++ VE model under UNet2DModel's names
(`convert_diffusers.write_diffusers_folder`); `convert-diffusers OUT_DIR` reads it back bit for bit.
The input is never written over, an existing output only with --force (`fileio.check_outputs`, `check_new_folder`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from pds_lightning.convert_diffusers import write_diffusers_folder
from pds_lightning.fileio import check_new_folder, check_outputs
from pds_lightning.checkpoints import read_checkpoint
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
    return save_checkpoint_weights(read_checkpoint(checkpoint_path), output)


def export_diffusers(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike | None,
                     force: bool = False) -> Path:
    """Write a checkpoint's NCSN++ VE model (EMA weights) as a diffusers ScoreSdeVePipeline folder; returns it."""
    if out_dir is None:
        raise ValueError("--format diffusers writes a folder: give OUT_DIR after the checkpoint")
    check_new_folder(out_dir, force, (checkpoint_path,))  # before the (long) load
    module = ScoreModule.load_from_checkpoint(checkpoint_path, map_location="cpu")
    return write_diffusers_folder(module, out_dir, force=force, inputs=(checkpoint_path,))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pds-lightning export", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("checkpoint", help="checkpoint of fit or convert-* (.ckpt, or a .safetensors export)")
    parser.add_argument("out", nargs="?", default=None, help="with --format diffusers: the folder to write")
    parser.add_argument("--output", default=None, help="file to write (default: CHECKPOINT with .safetensors)")
    parser.add_argument("--format", choices=("safetensors", "diffusers"), default="safetensors",
                        help="diffusers: a ScoreSdeVePipeline folder of the EMA weights (NCSN++ VE models)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file or OUT_DIR (never the input)")
    args = parser.parse_args(argv)
    if args.format == "diffusers":
        if args.output is not None:
            parser.error("--format diffusers takes OUT_DIR as its second argument, not --output")
        print(f"wrote {export_diffusers(args.checkpoint, args.out, args.force)} (EMA weights)")
        return 0
    if args.out is not None:
        parser.error("OUT_DIR goes with --format diffusers; a .safetensors file is named by --output")
    print(f"wrote {export(args.checkpoint, args.output, args.force)}")
    return 0
