"""Samplers of score SDEs: predictor-corrector (vanilla or PDS) and the probability-flow ODE."""

from pds_lightning.sampling.noise import PreconditionedNoise, RecordedNoise, SeededNoise
from pds_lightning.sampling.samplers import NonFiniteSampleError, SampleResult, ode_sampler, pc_sampler
from pds_lightning.sampling.settings import SamplerSettings, generate

__all__ = ["SeededNoise", "RecordedNoise", "PreconditionedNoise", "pc_sampler", "ode_sampler", "SampleResult",
           "NonFiniteSampleError", "SamplerSettings", "generate"]
