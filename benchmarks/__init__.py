"""Benchmarks of pds_lightning; run each from the repository root as `python -m benchmarks.<name>` (shared
helpers: benchmarks/common.py)."""
