"""What ``medai register`` (intensity registration) is run with, as one typed value.

:class:`RegistrationSettings` names each ``medai register`` option once; the panel's worker job generates
its command line from it (:func:`~MedAICommonLib.cli.command_line.to_cli_args`) and the command reads the
parsed arguments back into it. The modes are ``Literal`` types whose values are the command's choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, cast

from MedAICommonLib.cli.command_line import from_namespace, option, to_cli_args

Transform = Literal["rigid", "similarity", "affine", "bspline"]
Preset = Literal["auto", "ct-ct", "ct-mr-head", "mr-mr-brain", "pet-ct"]
RegistrationDevice = Literal["cpu", "simpleitk", "torch", "torch-cpu", "cuda", "auto"]
Metric = Literal["mattes", "meansquares", "correlation"]
#: the panel's own preset: the CT-CT preset's settings with the metric chosen in the panel
CUSTOM_PRESET = "custom"


@dataclass(frozen=True)
class RegistrationSettings:
    """``transform``: the transform type; ``preset``: the pair's settings (``auto``: chosen from the volumes);
    ``device``: the compute path (see ``medai register --help``); ``metric``: overrides the preset's metric;
    ``sampling_percentage``: share of fixed voxels sampled for the metric, in percent (0 < P <= 100)."""

    transform: Transform = field(default="rigid", metadata=option("--transform"))
    preset: Preset = field(default="auto", metadata=option("--preset"))
    device: RegistrationDevice = field(default="cpu", metadata=option("--device"))
    metric: Metric | None = field(default=None, metadata=option("--metric"))
    sampling_percentage: float | None = field(default=None, metadata=option("--sampling-percentage"))

    @classmethod
    def from_panel(
        cls,
        transform: Transform,
        preset: str | None,
        device: RegistrationDevice,
        metric: Metric | None = None,
        sampling_percentage: float | None = None,
    ) -> RegistrationSettings:
        """The settings of the panel's choices: preset ``custom`` is ``ct-ct`` with ``metric`` (default mattes);
        no preset is ``auto``; the metric counts only with ``custom``, as in the in-process Logic."""
        if preset == CUSTOM_PRESET:
            return cls(transform, "ct-ct", device, metric or "mattes", _percent(sampling_percentage))
        return cls(transform, cast(Preset, preset or "auto"), device, None, _percent(sampling_percentage))

    def to_cli_args(self) -> list[str]:
        """The ``medai register`` options that give these settings (no inputs, masks or outputs)."""
        return to_cli_args(self)

    @classmethod
    def from_namespace(cls, args) -> RegistrationSettings:
        """The settings of a parsed ``medai register`` command line."""
        return from_namespace(cls, args)


def _percent(value: float | None) -> float | None:
    return None if value is None else float(value)
