"""Intensity-based registration (Mattes MI, NCC) on SimpleITK, numba and torch, with sampling, B-splines, preset choice and backends."""
