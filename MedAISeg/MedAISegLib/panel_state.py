"""Which MedAISeg panel buttons can run, from the panel's parameter values (Qt-free, tested in pytest).

A button is enabled only when what its run needs is chosen; a path counts as chosen only when
:func:`MedAICommonLib.paths.is_unset_path` says so (Slicer gives ``Path('.')`` for an unset one).
"""

from __future__ import annotations

from MedAICommonLib.paths import is_unset_path


def seg_buttons(p) -> dict[str, bool]:
    """``{button name: enabled}`` for the MedAISeg panel.

    ``p`` is anything with the parameter node's fields as attributes (the ``MedAISegParameterNode``
    wrapper, or a ``SimpleNamespace`` in tests); node fields are MRML nodes or None.
    """
    has_input = bool(p.inputVolume)
    has_model = not is_unset_path(p.modelPath)
    has_segmentation = bool(p.outputSegmentation)
    method_ready = {"model": has_model, "region-growing": bool(p.seeds)}.get(p.segmentMethod, True)
    can_train = has_input and bool(p.trainingLabels) and not is_unset_path(p.bundleFolder)
    return {
        "preprocessButton": has_input,
        "segmentButton": has_input and method_ready,
        "postprocessButton": has_segmentation,
        "lesionsButton": has_segmentation,
        "evaluateButton": has_segmentation and bool(p.referenceSegmentation),
        "trainButton": can_train,
        "fineTuneButton": can_train and has_model,
        "explainButton": has_input and has_model,
    }


def batch_widgets(p) -> dict[str, bool]:
    """``{widget name: enabled}`` for the Batch section: the pipeline file only when "file" is chosen, Run when
    the pipeline, the cases (folder or manifest) and the output folder are chosen."""
    wants_file = p.batchPipeline == "file"
    pipeline_ready = not wants_file or not is_unset_path(p.batchPipelineFile)
    chosen = not is_unset_path(p.batchInput) and not is_unset_path(p.batchOutputFolder)
    return {"batchPipelineFileLineEdit": wants_file, "batchRunButton": pipeline_ready and chosen}
