"""pds_lightning: score SDEs in PyTorch Lightning, sampled with Preconditioned Diffusion Sampling."""

__version__ = "0.1.0"
