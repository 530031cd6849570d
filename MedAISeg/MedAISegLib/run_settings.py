"""What MedAISeg's worker runs are run with, as typed values that write their own command lines.

Each dataclass names its ``medai`` command's options once (:func:`~MedAICommonLib.cli.command_line.option`);
the panel's worker jobs (:mod:`MedAISegLib.worker_logic`, :mod:`MedAISegLib.preprocess_worker_logic`) generate
their command lines from them and the real parsers read them back (``from_namespace``). Inputs and outputs
(files, job placeholders) are not settings and stay with the job builders. Modes are ``Literal`` types
whose values are the commands' choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from MedAICommonLib.cli.command_line import from_namespace, option, to_cli_args
from MedAICommonLib.devices import Device

DenoiseMethod = Literal["nlm", "anisotropic", "curvature", "clahe", "n4"]
ExplainMethod = Literal["auto", "gradcam", "gradient"]
Network = Literal["segresnet", "unet", "dynunet", "swinunetr"]


class _CommandSettings:
    """``to_cli_args`` and ``from_namespace`` for the dataclasses below."""

    def to_cli_args(self) -> list[str]:
        """The command's options that give these settings (no inputs or outputs)."""
        return to_cli_args(self)

    @classmethod
    def from_namespace(cls, args):
        """The settings of a parsed command line (options the command lacks keep their defaults)."""
        return from_namespace(cls, args)


@dataclass(frozen=True)
class ModelSegmentationSettings(_CommandSettings):
    """``medai segment --model``: the model (bundle folder or TorchScript file with its card), the device,
    flip test-time augmentation and whether the user trusted the bundle (its configs can run Python code)."""

    model: str = field(metadata=option("--model"))
    device: Device = field(default="auto", metadata=option("--device"))
    tta: bool = field(default=False, metadata=option("--tta", "flag"))
    trust_bundle: bool = field(default=False, metadata=option("--trust-bundle", "flag"))


@dataclass(frozen=True)
class DenoiseSettings(_CommandSettings):
    """``medai denoise``: the filter and the device (NLM); the other filter settings keep the command's defaults."""

    method: DenoiseMethod = field(metadata=option("--method"))
    device: Device = field(default="auto", metadata=option("--device"))


@dataclass(frozen=True)
class TrainingSettings(_CommandSettings):
    """``medai train`` as the panel runs it: epochs, network, training spacing (mm, x y z), device and the
    model to start from (bundle folder or TorchScript file with its card; None: from scratch)."""

    epochs: int = field(default=100, metadata=option("--epochs"))
    network: Network = field(default="segresnet", metadata=option("--network"))
    spacing_mm: tuple[float, float, float] = field(default=(1.5, 1.5, 1.5), metadata=option("--spacing", "values"))
    device: Device = field(default="auto", metadata=option("--device"))
    init_bundle: str | None = field(default=None, metadata=option("--init-bundle"))


@dataclass(frozen=True)
class FineTuneSettings(_CommandSettings):
    """``medai fine-tune``: the model to fine-tune, epochs, learning rate and device."""

    model: str = field(metadata=option("--model"))
    epochs: int = field(default=20, metadata=option("--epochs"))
    learning_rate: float = field(default=1e-3, metadata=option("--learning-rate"))
    device: Device = field(default="auto", metadata=option("--device"))


@dataclass(frozen=True)
class ExplainSettings(_CommandSettings):
    """``medai explain``: the model, the label to explain (None: the model's first), the method and device."""

    model: str = field(metadata=option("--model"))
    segment: str | None = field(default=None, metadata=option("--segment"))
    method: ExplainMethod = field(default="auto", metadata=option("--method"))
    device: Device = field(default="auto", metadata=option("--device"))
    trust_bundle: bool = field(default=False, metadata=option("--trust-bundle", "flag"))
