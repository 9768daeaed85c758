"""Samplers of score SDEs: predictor-corrector (vanilla or PDS) and the probability-flow ODE.

Runs settings whose alpha is a number; `alpha: auto` is chosen by pds_lightning.alpha (the layer above).
"""

from pds_lightning.sampling.noise import RecordedNoise, SeededNoise
from pds_lightning.sampling.reference import pds_pc_sampler
from pds_lightning.sampling.samplers import NonFiniteSampleError, SampleResult, ode_sampler, pc_sampler
from pds_lightning.sampling.settings import SamplerSettings, generate, with_alpha

__all__ = ["SeededNoise", "RecordedNoise", "pc_sampler", "ode_sampler", "pds_pc_sampler", "SampleResult",
           "NonFiniteSampleError", "SamplerSettings", "generate", "with_alpha"]
