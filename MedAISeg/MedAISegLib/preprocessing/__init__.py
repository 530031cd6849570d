"""Preprocessing of volumes before segmentation: non-local means (torch and numba), anisotropic diffusion, CLAHE, N4 and intensity filters."""
