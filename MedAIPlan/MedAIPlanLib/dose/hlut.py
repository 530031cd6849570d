"""HU -> relative electron density calibration tables (photon dose calculation).

The default is matRad's ``matRad_default.hlut`` (photons): piecewise-linear through
(-1024, 0.001) (-999, 0.001) (-90, 0.95) (-45, 0.99) (0, 1.0) (100, 1.095) (350, 1.199)
(3000, 2.505), clamped outside the table. User tables are two-column text files: matRad's
``.hlut`` (whitespace separated, ``#`` comments) or CSV (``HU,density``, an optional header line).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_HLUT = np.array(
    [
        [-1024.0, 0.001],
        [-999.0, 0.001],
        [-90.0, 0.95],
        [-45.0, 0.99],
        [0.0, 1.0],
        [100.0, 1.095],
        [350.0, 1.199],
        [3000.0, 2.505],
    ]
)
"""matRad's default photon HLUT: column 0 HU, column 1 relative electron density."""


def validate_hlut(table) -> np.ndarray:
    """Check a (N, 2) HU/density table (N >= 2, HU strictly increasing, density >= 0); return it."""
    t = np.asarray(table, dtype=float)
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] < 2:
        raise ValueError(f"An HU table needs at least two rows of (HU, density), got shape {t.shape}.")
    if np.any(np.diff(t[:, 0]) <= 0):
        raise ValueError("HU values of the calibration table must be strictly increasing; sort the table.")
    if np.any(t[:, 1] < 0) or not np.all(np.isfinite(t)):
        raise ValueError("Densities of the calibration table must be finite and non-negative.")
    return t


def load_hlut(path) -> np.ndarray:
    """Read a matRad ``.hlut`` or a CSV calibration table into a (N, 2) array (HU, density)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"HU calibration table not found: {p}")
    rows = []
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").replace(";", " ").split()
        try:
            values = [float(v) for v in parts[:2]]
        except ValueError:
            continue  # header line
        if len(values) == 2:
            rows.append(values)
    return validate_hlut(np.array(rows))


def hu_to_density(hu: np.ndarray, table=None) -> np.ndarray:
    """Relative electron density (float32) of an HU array by linear interpolation, clamped at the ends."""
    t = validate_hlut(DEFAULT_HLUT if table is None else table)
    hu = np.asarray(hu)
    out = np.empty(hu.shape, np.float32)
    flat_in, flat_out = hu.reshape(-1), out.reshape(-1)
    for a in range(0, flat_in.size, 8_000_000):  # slabs: no float64 copy of a whole large CT
        flat_out[a : a + 8_000_000] = np.interp(flat_in[a : a + 8_000_000].astype(float), t[:, 0], t[:, 1])
    return out
