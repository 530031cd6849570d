"""Model card: what a segmentation model needs and produces, stored as JSON beside the model.

MedAI's card for TorchScript models (``model.ts`` + ``model.ts.json`` or ``model_card.json`` in the
same folder)::

    {
      "name": "Spleen CT", "format": "torchscript", "file": "model.ts",
      "inputs": [{"name": "CT", "modality": "CT"}],           # one entry per channel, in order
      "orientation": "RAS",                                   # optional; null = the input's own axes
      "spacing_mm": [1.5, 1.5, 2.0],                          # i, j, k; null = the input's own grid
      "axis_order": "ijk",                                    # network axes after the channel: ijk (MONAI) or kji
      "normalization": {"type": "window", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": true},
      "roi_size": [96, 96, 96], "overlap": 0.25, "activation": "softmax",
      "labels": [{"value": 1, "name": "spleen", "color": [0.62, 0.35, 0.23],
                  "terminology": "SCT^123037004^Anatomical Structure~SCT^78961009^Spleen~^^~..."}]
    }

Normalisation types: ``none``; ``window`` (MONAI ScaleIntensityRange: [a_min, a_max] -> [b_min,
b_max], optional clip); ``zscore`` (per channel, ``nonzero``: statistics over non-zero voxels only);
``percentile`` (``lower``/``upper`` percentiles -> [0, 1], clipped). Units: those of the input
(HU for CT). ``activation_bytes_per_voxel`` (optional) tunes the memory estimate.

``orientation`` (optional): the voxel-axis orientation the network was trained in, as three
letters naming where increasing i, j, k point (DICOM/MONAI convention: "RAS" = i towards Right,
j towards Anterior, k towards Superior, like MONAI's ``Orientationd(axcodes="RAS")``; "LPS" =
DICOM's). The input is reoriented with SimpleITK ``DICOMOrient`` (a permutation/flip of the voxel
axes, no interpolation; an oblique volume gets the closest axes) before ``spacing_mm`` applies,
and the labels are mapped back exactly onto the input's grid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NORMALIZATIONS = ("none", "window", "zscore", "percentile")
_AXIS_PAIRS = ({"R", "L"}, {"A", "P"}, {"S", "I"})


def check_orientation(code) -> str | None:
    """Upper-case orientation code (e.g. "RAS", "LPS", "PIR"), None for none; ValueError when invalid."""
    if code in (None, ""):
        return None
    text = str(code).upper()
    axes = sorted(next((i for i, pair in enumerate(_AXIS_PAIRS) if c in pair), -1) for c in text)
    if axes != [0, 1, 2]:
        raise ValueError(f"orientation {code!r} is not an axis code like 'RAS' or 'LPS' (one of R/L, A/P, S/I each).")
    return text


@dataclass
class LabelInfo:
    """One output class: label value, name, colour (RGB 0..1) and terminology entry string."""

    value: int
    name: str
    color: tuple[float, float, float] | None = None
    terminology: str | None = None


@dataclass
class ModelCard:
    """Parsed model card (see the module docstring for the JSON layout)."""

    name: str
    labels: list[LabelInfo]
    inputs: list[dict] = field(default_factory=lambda: [{"name": "image"}])
    spacing_mm: tuple[float, float, float] | None = None
    axis_order: str = "ijk"
    normalization: dict = field(default_factory=lambda: {"type": "none"})
    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = 0.25
    activation: str = "softmax"
    file: str | None = None
    format: str = "torchscript"
    activation_bytes_per_voxel: float = 512.0
    orientation: str | None = None

    @property
    def channels(self) -> int:
        """Number of input channels (images) the model takes."""
        return len(self.inputs)

    @property
    def classes(self) -> int:
        """Number of output channels (background included for softmax models)."""
        top = max((label.value for label in self.labels), default=0)
        return top if self.activation == "sigmoid" else top + 1

    @classmethod
    def from_dict(cls, data: dict) -> ModelCard:
        """Build from parsed JSON, checking the fields that matter; raises ValueError naming the problem."""
        if "labels" not in data or not data["labels"]:
            raise ValueError("The model card lists no labels; add 'labels': [{'value': 1, 'name': ...}].")
        labels = [
            LabelInfo(
                int(item["value"]),
                str(item["name"]),
                tuple(item["color"]) if item.get("color") else None,
                item.get("terminology"),
            )
            for item in data["labels"]
        ]
        norm = dict(data.get("normalization") or {"type": "none"})
        if norm.get("type") not in NORMALIZATIONS:
            raise ValueError(f"Unknown normalisation {norm.get('type')!r} in the model card; use {NORMALIZATIONS}")
        spacing = data.get("spacing_mm")
        order = data.get("axis_order", "ijk")
        if order not in ("ijk", "kji"):
            raise ValueError(f"axis_order must be 'ijk' or 'kji', got {order!r}")
        roi = tuple(int(v) for v in data.get("roi_size", (96, 96, 96)))
        if len(roi) != 3:
            raise ValueError(f"roi_size needs three sizes (voxels), got {roi}")
        return cls(
            name=str(data.get("name", "model")),
            labels=labels,
            inputs=list(data.get("inputs") or [{"name": "image"}]),
            spacing_mm=tuple(float(s) for s in spacing) if spacing else None,
            axis_order=order,
            normalization=norm,
            roi_size=roi,
            overlap=float(data.get("overlap", 0.25)),
            activation=data.get("activation", "softmax"),
            file=data.get("file"),
            format=data.get("format", "torchscript"),
            activation_bytes_per_voxel=float(data.get("activation_bytes_per_voxel", 512.0)),
            orientation=check_orientation(data.get("orientation")),
        )

    @classmethod
    def load(cls, path) -> ModelCard:
        """Read a card from a JSON file."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"The model card {path} is not valid JSON: {error}") from error

    def to_dict(self) -> dict:
        """The card as JSON-able data."""
        return {
            "name": self.name,
            "format": self.format,
            "file": self.file,
            "inputs": self.inputs,
            "spacing_mm": list(self.spacing_mm) if self.spacing_mm else None,
            "axis_order": self.axis_order,
            "normalization": self.normalization,
            "roi_size": list(self.roi_size),
            "overlap": self.overlap,
            "activation": self.activation,
            "orientation": self.orientation,
            "labels": [
                {
                    "value": lab.value,
                    "name": lab.name,
                    "color": list(lab.color) if lab.color else None,
                    "terminology": lab.terminology,
                }
                for lab in self.labels
            ],
        }

    def save(self, path) -> Path:
        """Write the card as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def find_card(model_path) -> Path | None:
    """The card of a model file: ``<file>.json``, ``<stem>.json`` or ``model_card.json`` beside it."""
    model_path = Path(model_path)
    for candidate in (
        model_path.with_name(model_path.name + ".json"),
        model_path.with_suffix(".json"),
        model_path.parent / "model_card.json",
    ):
        if candidate.exists() and candidate != model_path:
            return candidate
    return None


def normalize_array(array: np.ndarray, spec: dict) -> np.ndarray:
    """Apply a card's ``normalization`` to one channel (float32 out)."""
    a = np.asarray(array, dtype=np.float32)
    kind = spec.get("type", "none")
    if kind == "none":
        return a
    if kind == "window":
        a_min, a_max = float(spec["a_min"]), float(spec["a_max"])
        b_min, b_max = float(spec.get("b_min", 0.0)), float(spec.get("b_max", 1.0))
        out = (a - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
        return np.clip(out, min(b_min, b_max), max(b_min, b_max)) if spec.get("clip", True) else out
    if kind == "zscore":
        values = a[a != 0] if spec.get("nonzero") else a
        mean, sd = (float(values.mean()), float(values.std())) if values.size else (0.0, 1.0)
        out = (a - mean) / (sd or 1.0)
        return np.where(a != 0, out, 0.0).astype(np.float32) if spec.get("nonzero") else out
    if kind == "percentile":
        lo, hi = np.percentile(a, [float(spec.get("lower", 0.5)), float(spec.get("upper", 99.5))])
        return np.clip((a - lo) / ((hi - lo) or 1.0), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"Unknown normalisation {kind!r}")
