"""Fluence optimisation: plan objectives (matRad's definitions), their stacked-matrix and fused kernels, L-BFGS-B on every device, and beam-angle selection."""
