"""Registration quality: MI/NCC between two volumes on one grid, landmark TRE, Dice, checkerboard and
difference volumes, and a before/after overlay PNG. Arrays are KJI on the same voxel grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32, mask: np.ndarray | None = None) -> float:
    """Mutual information (nats) of the joint intensity histogram of two same-shape arrays."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if mask is not None:
        keep = np.asarray(mask, bool).ravel()
        a, b = a[keep], b[keep]
    if a.size == 0:
        raise ValueError("No voxels to compare: the mask is empty or the volumes do not overlap.")
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / (pa @ pb)[nonzero])))


def normalized_cross_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation (-1..1) of the voxel intensities of two same-shape arrays."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if mask is not None:
        keep = np.asarray(mask, bool).ravel()
        a, b = a[keep], b[keep]
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denominator) if denominator > 0 else 0.0


def mean_squares(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared intensity difference of two same-shape arrays (lower is better)."""
    return float(np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def alignment_metrics(fixed: np.ndarray, before: np.ndarray, after: np.ndarray, metric: str = "mattes") -> dict:
    """MI and NCC of ``fixed`` with the moving image at the start (``before``) and registered (``after``),
    all on the fixed grid (KJI), plus ``metric_before``/``metric_after``: the optimised metric (MI in nats
    for "mattes", NCC for "correlation", mean squares for "meansquares"), and ``improved``: whether it got
    better (higher MI/NCC, lower mean squares)."""
    out = {
        "mi_before": mutual_information(fixed, before),
        "mi_after": mutual_information(fixed, after),
        "ncc_before": normalized_cross_correlation(fixed, before),
        "ncc_after": normalized_cross_correlation(fixed, after),
    }
    if metric == "meansquares":
        out["metric_before"], out["metric_after"] = mean_squares(fixed, before), mean_squares(fixed, after)
        out["improved"] = out["metric_after"] <= out["metric_before"]
    else:
        key = "ncc" if metric == "correlation" else "mi"
        out["metric_before"], out["metric_after"] = out[f"{key}_before"], out[f"{key}_after"]
        out["improved"] = out["metric_after"] >= out["metric_before"]
    out["metric"] = {
        "mattes": "mutual information (nats)",
        "correlation": "normalised cross-correlation",
        "meansquares": "mean squares",
    }[metric]
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap (0..1) of two boolean masks on one grid (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def landmark_tre(mapped: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-landmark target registration error (mm): |mapped_i - target_i|."""
    return np.linalg.norm(np.asarray(mapped, float) - np.asarray(targets, float), axis=1)


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """A volume alternating ``a`` and ``b`` in ``squares`` blocks along each axis (for visual checks)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"Checkerboard needs two volumes on one grid, got {a.shape} and {b.shape}.")
    index = np.indices(a.shape)
    parity = sum((index[axis] * squares // max(1, a.shape[axis])) for axis in range(a.ndim)) % 2
    return np.where(parity == 0, a, b)


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Voxel-wise difference a - b (float32)."""
    return (np.asarray(a, np.float32) - np.asarray(b, np.float32)).astype(np.float32)


def _normalised(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1, 99])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay_png(
    fixed_slice: np.ndarray, before_slice: np.ndarray, after_slice: np.ndarray, path, title: str = ""
) -> Path:
    """PNG with fixed (magenta) over moving (green) before and after registration, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, moving, label in zip(axes, (before_slice, after_slice), ("before", "after")):
        f, m = _normalised(fixed_slice), _normalised(moving)
        ax.imshow(np.stack([f, m, f], -1))
        ax.set_title(f"{title} {label}".strip())
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
