"""The alpha choosers a PDS component takes instead of a number (`PDS(alpha=Surrogate())`); resolve_alpha runs them."""

from __future__ import annotations

from pds_lightning.sampling.base import check_number
from pds_lightning.sampling.pds import AlphaChooser


class Surrogate(AlphaChooser):
    """alpha predicted from the data statistics by the Gaussian surrogate (no network calls)."""

    method = "surrogate"

    def __init__(self):
        pass


class Pilot(AlphaChooser):
    """alpha measured: `samples` pilot images of the model per candidate, scored by their spectral error."""

    method = "pilot"

    def __init__(self, samples: int = 16):
        check_number("Pilot", "samples", samples, low=2, integer=True, hint=" (a spectrum is estimated from them)")
        self.samples = int(samples)
