"""Samplers of score SDEs as components: one class per method (PC, ProbabilityFlowODE, EDMHeun, EDMStochastic,
DPMSolverPP2M, Euler, DPMSolverPP2MSDE, Restart), configured by class_path / init_args, with their predictor,
corrector, schedule and PDS components, each of which does its own work (an update, the sigmas). `generate`
turns seeds into samples; PDS alpha choosers are resolved above (pds_lightning.alpha).
"""

from pds_lightning.sampling.base import Component, SampleResult, Sampler
from pds_lightning.sampling.correctors import ALD, Corrector, Langevin
from pds_lightning.sampling.dpmpp_2m import DPMSolverPP2M
from pds_lightning.sampling.dpmpp_2m_sde import DPMSolverPP2MSDE
from pds_lightning.sampling.edm_heun import EDMHeun
from pds_lightning.sampling.edm_stochastic import EDMStochastic
from pds_lightning.sampling.euler import Euler
from pds_lightning.sampling.generate import generate
from pds_lightning.sampling.noise import RecordedNoise, SeededNoise
from pds_lightning.sampling.ode import ProbabilityFlowODE
from pds_lightning.sampling.pc import PC
from pds_lightning.sampling.pds import PDS, AlphaChooser, Preconditioning, UnresolvedBands
from pds_lightning.sampling.predictors import AncestralSampling, EulerMaruyama, Predictor, ReverseDiffusion
from pds_lightning.sampling.reference import pds_pc_sampler
from pds_lightning.sampling.restart import Restart
from pds_lightning.sampling.schedules import Karras, SDEGrid
from pds_lightning.sampling.step import NonFiniteSampleError

__all__ = ["Component", "Sampler", "SampleResult", "PC", "ProbabilityFlowODE", "EDMHeun", "EDMStochastic",
           "DPMSolverPP2M", "Euler", "DPMSolverPP2MSDE", "Restart", "Predictor", "ReverseDiffusion", "EulerMaruyama",
           "AncestralSampling", "Corrector", "Langevin", "ALD", "Karras", "SDEGrid", "Preconditioning", "PDS",
           "UnresolvedBands", "AlphaChooser", "generate", "SeededNoise", "RecordedNoise", "pds_pc_sampler",
           "NonFiniteSampleError"]
