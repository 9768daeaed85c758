"""`python -m pds_lightning` runs the `pds-lightning` command."""

from pds_lightning.cli import main

if __name__ == "__main__":
    main()
