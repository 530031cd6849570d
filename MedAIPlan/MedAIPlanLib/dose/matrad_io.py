"""matRad / pyRadPlan ``.mat`` files: patients (``ct`` + ``cst``) and photon base data.

The ONE place where matRad's conventions are mapped to MedAI's:

* matRad cubes are indexed (y, x, z) (rows = LPS y, columns = LPS x); MedAI arrays are KJI with
  i = x, j = y, k = z, so ``array_kji = cube.transpose(2, 0, 1)``.
* matRad world coordinates are LPS (mm). Voxel centre positions are ``ct.x/ct.y/ct.z`` when
  present, else ``dicomInfo.ImagePositionPatient`` + index * resolution, else (matRad >= 3,
  ``matRad_getWorldAxes``) the first voxel at ``-cubeDim/2 * resolution``.
* ``cst`` voxel lists are 1-based MATLAB column-major linear indices into the (y, x, z) cube.

Only ``scipy.io.loadmat`` is used (MATLAB v5 files); v7.3 (HDF5) files raise a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MedAICommonLib.geometry import Geometry


@dataclass
class Structure:
    """A named voxel structure: ``mask`` is a KJI bool array; ``kind`` is "TARGET" or "OAR"."""

    name: str
    kind: str
    mask: np.ndarray
    priority: int = 2
    objectives: list[dict] = field(default_factory=list)


@dataclass
class MatRadPatient:
    """CT in HU (KJI), relative electron density (KJI, None if absent), LPS geometry, structures."""

    hu: np.ndarray
    density: np.ndarray | None
    geometry: Geometry
    structures: list[Structure] = field(default_factory=list)
    hlut: np.ndarray | None = None

    def structure(self, name: str) -> Structure:
        """The structure called ``name`` (case-insensitive); ValueError naming the choices otherwise."""
        for s in self.structures:
            if s.name.lower() == name.lower():
                return s
        raise ValueError(f"No structure named {name!r}; available: {', '.join(s.name for s in self.structures)}.")


@dataclass
class PhotonMachine:
    """matRad photon base data for the SVD pencil beam (lengths in mm)."""

    sad: float
    scd: float
    betas: np.ndarray  # (3,) 1/mm
    m: float  # 1/mm primary attenuation
    kernel_pos: np.ndarray  # (P,) mm radial positions of the kernels
    kernel_ssd: np.ndarray  # (S,) mm
    kernels: np.ndarray  # (S, 3, P) radial kernels per SSD
    primary_fluence: np.ndarray  # (F, 2) radius mm, relative fluence
    penumbra_fwhm: float = 5.0  # mm at the isocentre
    energy: float = 6.0


def _loadmat(path):
    import scipy.io as sio

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"matRad file not found: {p}")
    try:
        return sio.loadmat(str(p), squeeze_me=True, struct_as_record=False)
    except NotImplementedError as error:  # MATLAB v7.3
        raise ValueError(f"{p.name} is a MATLAB v7.3 (HDF5) file; save it with -v7 to read it here.") from error


def _first(value):
    """matRad stores cubes in 1x1 cell arrays; after squeeze they may be object arrays."""
    if isinstance(value, np.ndarray) and value.dtype == object:
        return value.flat[0]
    return value


def matrad_cube_to_kji(cube: np.ndarray) -> np.ndarray:
    """(y, x, z) matRad cube -> KJI array (i = x, j = y, k = z)."""
    return np.ascontiguousarray(np.asarray(cube).transpose(2, 0, 1))


def kji_to_matrad_cube(array_kji: np.ndarray) -> np.ndarray:
    """KJI array -> (y, x, z) matRad cube (inverse of :func:`matrad_cube_to_kji`)."""
    return np.ascontiguousarray(np.asarray(array_kji).transpose(1, 2, 0))


def matrad_indices_to_mask(indices, cube_dim) -> np.ndarray:
    """1-based MATLAB linear indices into a (y, x, z) cube of ``cube_dim`` -> KJI bool mask."""
    dims = tuple(int(d) for d in cube_dim)
    cube = np.zeros(int(np.prod(dims)), dtype=bool)
    idx = np.atleast_1d(np.asarray(indices, dtype=np.int64)) - 1
    if idx.size and (idx.min() < 0 or idx.max() >= cube.size):
        raise ValueError("cst voxel index outside the CT cube; the file's ct and cst do not match.")
    cube[idx] = True
    return matrad_cube_to_kji(cube.reshape(dims, order="F"))


def mask_to_matrad_indices(mask_kji: np.ndarray) -> np.ndarray:
    """KJI bool mask -> sorted 1-based MATLAB linear indices of the (y, x, z) cube."""
    cube = kji_to_matrad_cube(mask_kji)
    return np.flatnonzero(cube.ravel(order="F")) + 1


def matrad_world_axes(ct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-centre coordinates (LPS mm) along x, y, z of a matRad ``ct`` struct (matRad's rules)."""
    dim = np.asarray(ct.cubeDim, dtype=int)
    res = np.array([float(ct.resolution.x), float(ct.resolution.y), float(ct.resolution.z)])
    names = getattr(ct, "_fieldnames", [])
    if all(n in names for n in ("x", "y", "z")) and np.size(ct.x) == dim[1]:
        return (np.asarray(ct.x, dtype=float), np.asarray(ct.y, dtype=float), np.asarray(ct.z, dtype=float))
    info = getattr(ct, "dicomInfo", None)
    if info is not None and "ImagePositionPatient" in getattr(info, "_fieldnames", []):
        first = np.asarray(info.ImagePositionPatient, dtype=float)
    else:
        first = -(dim[[1, 0, 2]] / 2.0) * res
    return tuple(first[a] + res[a] * np.arange(dim[[1, 0, 2]][a]) for a in range(3))


def matrad_geometry(ct) -> Geometry:
    """LPS Geometry (KJI shape) of a matRad ``ct`` struct."""
    x, y, z = matrad_world_axes(ct)
    dim = np.asarray(ct.cubeDim, dtype=int)
    res = (float(ct.resolution.x), float(ct.resolution.y), float(ct.resolution.z))
    return Geometry(spacing=res, origin=(x[0], y[0], z[0]), space="LPS", shape_kji=(dim[2], dim[0], dim[1]))


_OBJECTIVE_NAMES = {
    "SquaredOverdosing": "squared_overdose",
    "SquaredUnderdosing": "squared_underdose",
    "SquaredDeviation": "squared_deviation",
    "MeanDose": "mean",
    "MaxDVH": "max_dvh",
    "MinDVH": "min_dvh",
}


def _objectives(value) -> list[dict]:
    """matRad ``cst{i,6}`` objective structs -> [{"type", "dose", "penalty", ["volume"]}] (Gy, %)."""
    out = []
    items = value.flat if isinstance(value, np.ndarray) else [value]
    for obj in items:
        name = str(getattr(obj, "className", "")).split("matRad_")[-1]
        if name not in _OBJECTIVE_NAMES:
            continue
        params = np.atleast_1d(np.asarray(getattr(obj, "parameters", 0.0), dtype=float))
        entry = {
            "type": _OBJECTIVE_NAMES[name],
            "dose": float(params[0]),
            "penalty": float(getattr(obj, "penalty", 1.0)),
        }
        if name in ("MaxDVH", "MinDVH") and params.size > 1:
            entry["volume"] = float(params[1])
        out.append(entry)
    return out


def load_matrad_patient(path) -> MatRadPatient:
    """Read ``ct`` and ``cst`` of a matRad/pyRadPlan patient ``.mat`` file."""
    data = _loadmat(path)
    if "ct" not in data or "cst" not in data:
        raise ValueError(f"{Path(path).name} has no 'ct' and 'cst' variables; is it a matRad patient file?")
    ct = data["ct"]
    dim = np.asarray(ct.cubeDim, dtype=int)
    names = ct._fieldnames
    hu = matrad_cube_to_kji(_first(ct.cubeHU)) if "cubeHU" in names else None
    density = matrad_cube_to_kji(_first(ct.cube)).astype(np.float32) if "cube" in names else None
    hlut = np.asarray(ct.hlut, dtype=float) if "hlut" in names and np.size(ct.hlut) >= 4 else None
    if hu is None:
        if density is None:
            raise ValueError("The matRad ct has neither cubeHU nor cube.")
        hu = np.round((density - 1.0) * 1000.0).astype(np.int16)  # crude water-scale HU for display
    cst = np.atleast_2d(data["cst"])
    structures = []
    for row in cst:
        idx = _first(row[3])
        props = row[4] if len(row) > 4 else None
        priority = int(getattr(props, "Priority", 1 if str(row[2]).upper() == "TARGET" else 2))
        objectives = _objectives(row[5]) if len(row) > 5 else []
        structures.append(
            Structure(str(row[1]), str(row[2]).upper(), matrad_indices_to_mask(idx, dim), priority, objectives)
        )
    return MatRadPatient(
        hu=np.asarray(hu), density=density, geometry=matrad_geometry(ct), structures=structures, hlut=hlut
    )


def load_photon_machine(path) -> PhotonMachine:
    """Read matRad photon base data (e.g. ``photons_Generic.mat``)."""
    data = _loadmat(path)
    if "machine" not in data:
        raise ValueError(f"{Path(path).name} has no 'machine' variable; is it matRad base data?")
    mach = data["machine"]
    if str(getattr(mach.meta, "radiationMode", "photons")) != "photons":
        raise ValueError("The base data are not for photons.")
    d = mach.data
    kernels = list(np.atleast_1d(d.kernel))
    return PhotonMachine(
        sad=float(mach.meta.SAD),
        scd=float(mach.meta.SCD),
        betas=np.asarray(d.betas, dtype=float),
        m=float(d.m),
        kernel_pos=np.asarray(d.kernelPos, dtype=float),
        kernel_ssd=np.array([float(k.SSD) for k in kernels]),
        kernels=np.array([[k.kernel1, k.kernel2, k.kernel3] for k in kernels], dtype=float),
        primary_fluence=np.asarray(d.primaryFluence, dtype=float),
        penumbra_fwhm=float(getattr(d, "penumbraFWHMatIso", 5.0)),
        energy=float(d.energy),
    )
