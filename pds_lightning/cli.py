"""`pds-lightning`: LightningCLI (fit / validate / test / predict) plus the converter and the evaluator."""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from pds_lightning.data import ImageDataModule
from pds_lightning.module import ScoreModule

# Commands that are not Trainer entry points; each module exposes main(argv).
EXTRA_COMMANDS = {
    "convert-score-sde": ("pds_lightning.convert", "turn a score_sde checkpoint into a pds_lightning checkpoint"),
    "evaluate": ("pds_lightning.evaluate", "score a folder of samples (spectral error, FID/KID with features)"),
}


class PDSLightningCLI(LightningCLI):
    """LightningCLI whose model and data agree on the image geometry by construction."""

    def add_arguments_to_parser(self, parser) -> None:
        # One place for the image geometry: the data's values are the model's.
        parser.link_arguments("data.image_size", "model.image_size")
        parser.link_arguments("data.num_channels", "model.num_channels")
        parser.link_arguments("data.centered", "model.centered")


def cli_main(args: list[str] | None = None, run: bool = True) -> PDSLightningCLI:
    return PDSLightningCLI(
        ScoreModule,
        ImageDataModule,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        import importlib

        module = importlib.import_module(EXTRA_COMMANDS[argv[0]][0])
        sys.exit(module.main(argv[1:]))
    if argv and argv[0] in ("-h", "--help"):
        extra = "\n".join(f"  {name:<20} {help}" for name, (_, help) in EXTRA_COMMANDS.items())
        print(f"pds-lightning extra commands:\n{extra}\n")
    # LightningCLI reads sys.argv itself; passing it again only triggers its "args and argv" warning.
    cli_main(None if from_command_line else argv)


if __name__ == "__main__":
    main()
