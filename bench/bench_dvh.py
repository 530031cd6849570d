"""DVH: MedAI (contour sampling with shape interpolation and end caps) vs dicompyler-core on Nelms' benchmark.

Same RTSTRUCT/RTDOSE pairs for both; each D-value (Dmin, Dmax, Dmean, D99, D95, D5, D1, D0.03cc) and
the volume are compared with the analytical values; a row passes when all are within 1 %. Prints
one JSON object (times, pass fractions, median errors).

    MEDAI_PEER_PYTHON=/tmp/venv-eval/bin/python python bench/bench_dvh.py

dicompyler-core 0.5.6 needs pydicom < 3 while MedAI uses pydicom 3, so its side runs in the peer's
Python (``MEDAI_PEER_PYTHON``, a venv with dicompyler-core and pydicom 2.4) as ``bench_dvh.py --peer``;
the time reported for it is measured inside that process.

    python bench/bench_dvh.py --command

times the whole ``medai dvh`` command (a fresh process: imports, loading, six planar-contour structures,
tables) on SlicerRT's Eclipse prostate and reports its wall time and peak RSS (issue 14: 193-203 s, 7.3 GB).
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KEYS = ("Dmin", "Dmax", "Dmean", "D99", "D95", "D5", "D1", "D0.03cc")


def rows(base: Path):
    with open(base / "analytical" / "Extracted_Analytical_D_points.csv") as handle:
        for row in csv.DictReader(handle):
            structure = base / "structures" / f"{row['structure']}.dcm"
            if structure.exists() and "x" not in row["dose_voxel_mm"]:
                grid = "AntPost" if row["gradient_direction"].startswith("Z") else "SupInf"
                yield row, structure, base / "dose_grids" / f"Linear_{grid}_{row['dose_voxel_mm']}mm_Aligned.dcm"


def medai_values(structure, dose_path, cache):
    from MedAIPlanLib.dicomrt.dicom_rt import read_rtdose, read_rtstruct
    from MedAIPlanLib.evaluation import dose_metrics
    from MedAIPlanLib.evaluation.dvh import contour_samples

    if dose_path not in cache:
        cache[dose_path] = read_rtdose(dose_path)
    rd = cache[dose_path]
    roi = next(r for r in read_rtstruct(structure) if r.contours)
    s = contour_samples(roi.contours, rd.dose, rd.geometry)
    out = {
        "Dmin": s.dose.min(),
        "Dmax": s.dose.max(),
        "Dmean": np.average(s.dose, weights=s.weight),
        "D0.03cc": dose_metrics.dose_at_volume_cc(s, 0.03),
        "volume": s.volume_cc,
    }
    for p in (99, 95, 5, 1):
        out[f"D{p}"] = dose_metrics.dose_at_volume_percent(s, p)
    return out


def dicompyler_values(structure, dose_path, interpolate: bool):
    import pydicom
    from dicompylercore import dvhcalc

    ss = pydicom.dcmread(structure)
    number = next(
        int(r.ReferencedROINumber)
        for r in ss.ROIContourSequence
        if getattr(r, "ContourSequence", None) and r.ContourSequence[0].ContourGeometricType == "CLOSED_PLANAR"
    )
    kwargs = (
        {"interpolation_resolution": (0.25, 0.25), "interpolation_segments_between_planes": 2} if interpolate else {}
    )
    dvh = dvhcalc.get_dvh(str(structure), str(dose_path), number, **kwargs).absolute_dose()
    out = {
        "Dmin": dvh.min,
        "Dmax": dvh.max,
        "Dmean": dvh.mean,
        "volume": dvh.volume,
        "D0.03cc": dvh.statistic("D0.03cc").value,
    }
    for p in (99, 95, 5, 1):
        out[f"D{p}"] = dvh.statistic(f"D{p}").value
    return out


def peer() -> None:
    """Run in the peer's Python: dicompyler-core values for every row, as JSON on stdout."""
    base = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt" / "nelms-dvh-benchmark"
    out = {}
    for interp in (False, True):
        start = time.perf_counter()
        values = [dicompyler_values(s, d, interp) for _, s, d in rows(base)]
        out[str(interp)] = {
            "time_s": time.perf_counter() - start,
            "values": [{k: float(v) for k, v in x.items()} for x in values],
        }
    print(json.dumps(out))


def score(values, row):
    errors = [abs(values[k] - float(row[f"{k}_cGy"]) / 100) / (float(row[f"{k}_cGy"]) / 100) * 100 for k in KEYS]
    if row["total_volume_cc"]:
        errors.append(abs(values["volume"] - float(row["total_volume_cc"])) / float(row["total_volume_cc"]) * 100)
    return max(errors), errors


def command_figures() -> dict:
    """Wall time and peak RSS of ``medai dvh`` on the Eclipse prostate, run as a user runs it (a new process)."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt" / "SlicerRT"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "dvh.json"
        command = [
            "medai",
            "dvh",
            str(folder / "EclipseProstate_Dose.nrrd"),
            str(folder / "EclipseProstate_Structures.seg.vtm"),
            "--report",
            str(report),
        ]
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from MedAICommonLib.cli.main import main; sys.exit(main(sys.argv[1:]))",
                *command[1:],
            ],
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - start
        data = json.loads(report.read_text())
    return {
        "command": " ".join(command[:2] + ["EclipseProstate_Dose.nrrd", "EclipseProstate_Structures.seg.vtm"]),
        "wall_s": round(wall, 2),
        "dvh_step_s": data["timings_s"].get("dvh"),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 2),
        "structures": {
            n: {k: round(m[k], 3) for k in ("volume_cc", "Dmean_Gy", "D95_Gy") if k in m}
            for n, m in data["metrics"]["structures"].items()
        },
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    if "--peer" in sys.argv:
        peer()
        return
    if "--command" in sys.argv:
        print(
            json.dumps(
                {"data": "SlicerRT EclipseProstate (6 planar-contour structures)", **command_figures()}, indent=1
            )
        )
        return
    base = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt" / "nelms-dvh-benchmark"
    items = list(rows(base))
    result = {
        "data": "Nelms et al. 2015 analytical DVH benchmark",
        "rows": len(items),
        "criterion": "all D-values and volume within 1 %",
    }
    cache = {}
    start = time.perf_counter()
    ours = [score(medai_values(s, d, cache), r) for r, s, d in items]
    result["medai"] = {
        "time_s": round(time.perf_counter() - start, 2),
        "rows_passing": int(sum(m <= 1 for m, _ in ours)),
        "median_error_percent": float(np.median([e for _, es in ours for e in es])),
    }
    peer_python = os.environ.get("MEDAI_PEER_PYTHON", "/tmp/venv-eval/bin/python")
    run = subprocess.run([peer_python, __file__, "--peer"], capture_output=True, text=True, check=True)
    peer_out = json.loads(run.stdout.strip().splitlines()[-1])
    for name, interp in (("dicompyler_core", False), ("dicompyler_core_interpolated", True)):
        theirs = [score(v, r) for v, (r, _, _) in zip(peer_out[str(interp)]["values"], items)]
        result[name] = {
            "time_s": round(peer_out[str(interp)]["time_s"], 2),
            "rows_passing": int(sum(m <= 1 for m, _ in theirs)),
            "median_error_percent": float(np.median([e for _, es in theirs for e in es])),
        }
    result["time_ratio_dicompyler_over_medai"] = round(
        result["dicompyler_core"]["time_s"] / result["medai"]["time_s"], 2
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
