"""The MedAIPlan panel's DICOM-RT import and export, kept off Slicer's GUI thread where they are heavy.

- Import: :func:`rt_files_to_import` finds the RTDOSE / RTSTRUCT / RTPLAN files of the chosen file or
  folder reading only each file's header up to ``Modality`` (a bounded scan: at most ``max_files``
  files, so a wrongly chosen large folder is refused at once instead of freezing Slicer). The files
  themselves are then read with progress and Cancel (RTSTRUCT contours are rasterised on the CT grid
  and kept as planar contours for exact DVHs, which a worker's files could not carry).
- Export: :func:`rt_export_job` runs ``medai rt-export`` in a worker process (contouring every segment
  and writing the files is the slow part); the plan's beams are rebuilt there from the dose node's
  ``MedAIPlan.*`` attributes, passed on the command line because volume files do not keep them.
"""

from __future__ import annotations

from pathlib import Path

from MedAICommonLib.paths import require_path
from MedAICommonLib.jobs.scene_job import SceneJob

from MedAIPlanLib.plan_settings import PlanSettings, is_plan_dose

RT_MODALITIES = ("RTDOSE", "RTSTRUCT", "RTPLAN")
MAX_SCANNED_FILES = 2000


def _modality(path: Path) -> str:
    """The Modality of a DICOM file, reading the header only up to that tag; "" when it is not DICOM."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # noqa: BLE001 - whatever a non-DICOM file makes pydicom raise, it is skipped
        return ""
    return str(getattr(ds, "Modality", "") or "")


def rt_files_to_import(path, max_files: int = MAX_SCANNED_FILES) -> dict[str, list[Path]]:
    """``{"RTDOSE": [...], "RTSTRUCT": [...], "RTPLAN": [...]}``: the DICOM-RT files of ``path``.

    Args:
        path: a DICOM-RT file, or a folder searched recursively (the panel's ``rtImportPath``; an unset
            path, ``Path('.')``, is refused rather than meaning Slicer's working directory).
        max_files: a folder holding more files than this is refused with a clear error.

    Raises ``ValueError`` when the path is unset, missing, too large a folder or holds no DICOM-RT file.
    """
    root = require_path(path, "the DICOM-RT file or folder to import", must_exist=True)
    if root.is_dir():
        files = []
        for file in sorted(root.rglob("*")):
            if file.is_file():
                files.append(file)
                if len(files) > max_files:
                    raise ValueError(
                        f"{root} holds more than {max_files} files; choose the folder (or the file) "
                        "of the DICOM-RT objects to import."
                    )
    else:
        files = [root]
    found: dict[str, list[Path]] = {modality: [] for modality in RT_MODALITIES}
    for file in files:
        modality = _modality(file)
        if modality in found:
            found[modality].append(file)
    if not any(found.values()):
        raise ValueError(f"No RTDOSE, RTSTRUCT or RTPLAN found in {root} ({len(files)} file(s) read).")
    return found


def rt_export_args(dose_node=None, structures_node=None) -> list[str]:
    """``medai rt-export`` options after the output folder: inputs as job placeholders, and the plan's
    beams (:meth:`PlanSettings.to_rt_export_args`: ``--gantry``, ``--couch``, ``--target``, ``--isocenter``,
    ``--bixel-width``, ``--prescription``, ``--fractions``) when ``dose_node`` is a MedAI plan
    (:func:`is_plan_dose`) and the structures are given."""
    if dose_node is None and structures_node is None:
        raise ValueError("Nothing to export: select a dose volume and/or a structure set (segmentation).")
    args = []
    if dose_node is not None:
        args += ["--dose", "{in:dose}"]
    if structures_node is not None:
        args += ["--segmentation", "{in:structures}"]
    settings = PlanSettings.from_node_attributes(dose_node) if dose_node is not None else None
    if settings is not None and structures_node is not None:
        if not settings.target:
            raise ValueError(
                f"The plan dose {dose_node.GetName()!r} does not record its target segment; "
                "re-run the plan or export without the RTPLAN."
            )
        args += settings.to_rt_export_args()
    return args


def exported_modalities(dose_node=None, structures_node=None) -> list[str]:
    """The DICOM-RT objects an export of these nodes writes (``<MODALITY>.dcm`` in the folder)."""
    modalities = []
    if structures_node is not None:
        modalities.append("RTSTRUCT")
    if structures_node is not None and is_plan_dose(dose_node):
        modalities.append("RTPLAN")
    if dose_node is not None:
        modalities.append("RTDOSE")
    return modalities


def rt_export_job(scene, output_folder, dose_node=None, structures_node=None) -> SceneJob:
    """``medai rt-export FOLDER``: RTDOSE / RTSTRUCT (and RTPLAN for a MedAI plan) written by a worker.

    ``output_folder`` must be chosen (absolute; its parent must exist). The job makes no node; the
    files are ``<folder>/<MODALITY>.dcm`` for :func:`exported_modalities`.
    """
    folder = require_path(output_folder, "the DICOM-RT export folder", kind="folder")
    inputs = {}
    if dose_node is not None:
        inputs["dose"] = dose_node
    if structures_node is not None:
        inputs["structures"] = structures_node
    return SceneJob(scene, ["rt-export", str(folder), *rt_export_args(dose_node, structures_node)], inputs, [])
