"""What MedAISeg's Logic runs measured: one dataclass per kind of run, kept as the Logic's ``last_result``.

The field names are the keys the ``medai`` reports have always used, so a report is written with
``dataclasses.asdict`` (a model run adds the inference's own figures, :meth:`ModelSegmentationResult.report_metrics`).
Voxel counts are numbers of voxels; thresholds are in the input's units (e.g. HU); lengths in mm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass
class DenoiseResult:
    """A preprocessing run: the method and the device it ran on (``cpu`` for the SimpleITK filters)."""

    method: str
    device: str = "cpu"


@dataclass
class ThresholdResult:
    """``lower <= value <= upper`` (None: open) and the voxels selected."""

    lower: float | None
    upper: float | None
    voxels: int


@dataclass
class OtsuResult:
    """The Otsu thresholds between the classes, ascending."""

    thresholds: list[float]


@dataclass
class RegionGrowingResult:
    """The seeds as voxel indices (i, j, k) and the voxels of the grown region."""

    seeds_ijk: list[list[int]]
    voxels: int


@dataclass
class ModelSegmentationResult:
    """An AI segmentation: what the inference reported (device, windows, batch size, timings, a bundle's
    trust and inferer, ...), the names of the extra volume nodes made (probabilities, uncertainty) and the
    voxels per segment."""

    inference: dict[str, Any] = field(default_factory=dict)
    extra_nodes: list[str] = field(default_factory=list)
    voxels: dict[str, int] = field(default_factory=dict)

    @property
    def device(self) -> str:
        """The device the model ran on."""
        return str(self.inference.get("device", "cpu"))

    def report_metrics(self) -> dict[str, Any]:
        """The report's metrics: the inference's figures and ``voxels``."""
        return {**self.inference, "voxels": self.voxels}


@dataclass
class PostprocessResult:
    """Voxels per segment before and after the clean-up."""

    voxels_before: dict[str, int]
    voxels_after: dict[str, int]


@dataclass
class LesionResult:
    """One dict per lesion: label, volume_mm3, max_diameter_mm, centroid_ras (mm), mean/max intensity."""

    lesions: list[dict[str, Any]]


@dataclass
class EvaluationResult:
    """``{segment name: {metric: value}}`` (Dice, Jaccard, HD95 and ASD in mm, sensitivity, volumes, ...)."""

    metrics: dict[str, dict[str, Any]]


@dataclass
class TrainingRunResult:
    """A training or fine-tuning run of :class:`~MedAISegLib.training_logic.MedAITrainingLogic`: the best epoch
    (by validation Dice, or by training loss when no case was held out; ``best_val_dice`` is then None), epochs
    run, why it stopped, seconds, the device, the bundle's files and the ID of the training-curves table node;
    for data-parallel training the number of processes, their ``torch.distributed`` backend (None for one process)
    and this process's rank (only rank 0 writes files)."""

    best_val_dice: float | None
    best_epoch: int
    best_epoch_by: str
    best_training_loss: float | None
    epochs_run: int
    stopped: str
    seconds: float
    device: str
    files: dict[str, str]
    table: str
    world_size: int = 1
    backend: str | None = None
    rank: int = 0


@dataclass
class ExplainResult:
    """An explanation map: the segment explained and its label value, the method (gradcam or gradient), the
    Grad-CAM feature layer (None for gradient x input) and the device."""

    segment: str
    label: int
    method: str
    layer: str | None
    device: str


SegmentationResult = (
    DenoiseResult
    | ThresholdResult
    | OtsuResult
    | RegionGrowingResult
    | ModelSegmentationResult
    | PostprocessResult
    | LesionResult
    | EvaluationResult
)


def expect_result(result: object, kind: type[R]) -> R:
    """``result`` as a ``kind``; ``RuntimeError`` when the last run made something else (or nothing)."""
    if not isinstance(result, kind):
        made = "no result" if result is None else type(result).__name__
        raise RuntimeError(f"Expected the last run to give a {kind.__name__}, it gave {made}.")
    return result


def report_metrics(result: SegmentationResult | None) -> dict[str, Any]:
    """The report's metrics of a run: its fields (``dataclasses.asdict``; a model run's inference figures and
    voxels, :meth:`ModelSegmentationResult.report_metrics`); empty before any run."""
    if result is None:
        return {}
    if isinstance(result, ModelSegmentationResult):
        return result.report_metrics()
    return dataclasses.asdict(result)
