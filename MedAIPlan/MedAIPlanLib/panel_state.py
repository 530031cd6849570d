"""Which MedAIPlan panel buttons can run, from the panel's parameter values (Qt-free, tested in pytest).

A path counts as chosen only when :func:`MedAICommonLib.paths.is_unset_path` says so (Slicer gives
``Path('.')`` for an unset one, which would make DICOM-RT import scan Slicer's working directory).
"""

from __future__ import annotations

from MedAICommonLib.paths import is_unset_path


def plan_buttons(p) -> dict[str, bool]:
    """``{button name: enabled}`` for the MedAIPlan panel.

    ``p`` is anything with the parameter node's fields as attributes (the ``MedAIPlanParameterNode``
    wrapper, or a ``SimpleNamespace`` in tests); node fields are MRML nodes or None.
    """
    has_dose = bool(p.doseVolume)
    return {
        "planButton": bool(p.ctVolume and p.structures and str(p.targetSegment or "").strip()),
        "dvhButton": has_dose and bool(p.structures),
        "isodoseButton": has_dose,
        "gammaButton": bool(p.referenceDose and p.evaluatedDose),
        "rtImportButton": not is_unset_path(p.rtImportPath),
        "rtExportButton": not is_unset_path(p.rtExportFolder) and (has_dose or bool(p.structures)),
    }


CONTOUR_QA_MODES = ("candidate segmentation", "probability volumes")
"""What the Contour QA section compares the reference with (the parameter node's ``qaMode`` choices)."""


def contour_qa_widgets(p) -> dict[str, bool]:
    """``{widget name: enabled}`` of the Contour QA section: the candidate selector in the first mode, the
    probability sources in the second, and the Compute button once its inputs are chosen (a probability
    source is checked when it runs: volumes of the scene need no parameter).

    ``p`` has the parameter node's ``qa*`` fields as attributes.
    """
    candidate_mode = p.qaMode == CONTOUR_QA_MODES[0]
    ready = bool(p.qaDose and p.qaReference) and (bool(p.qaCandidate) or not candidate_mode)
    return {
        "qaCandidateSelector": candidate_mode,
        "qaProbabilityFolderLineEdit": not candidate_mode,
        "qaProbabilityVolumesSelector": not candidate_mode and is_unset_path(p.qaProbabilityFolder),
        "contourQAButton": ready,
    }
