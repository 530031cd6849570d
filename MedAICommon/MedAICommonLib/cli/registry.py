"""Which module defines each ``medai`` command, and its one-line help, known without importing it.

``medai --help`` is built from this table alone; ``medai COMMAND`` imports only the module named here.
A test checks that every module registers exactly the commands (and help lines) listed for it.
"""

from __future__ import annotations

_COMMON = "MedAICommonLib.cli.common_commands"
_SEG = "MedAISegLib.commands"
_TRAIN = "MedAISegLib.training_commands"
_REGISTER = "MedAIRegisterLib.commands"
_PLAN = "MedAIPlanLib.commands"
_EVALUATION = "MedAIPlanLib.evaluation_commands"

#: command name -> (module that registers it, help line), in the order of ``medai --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "info": (_COMMON, "print versions and available compute devices"),
    "demo": (_COMMON, "run the end-to-end pipeline on generated data"),
    "convert": (_COMMON, "read a file through Slicer's storage nodes and write another format"),
    "dicom-import": (_COMMON, "read a DICOM image series into a volume file"),
    "denoise": (_SEG, "denoise / enhance a volume (NLM on GPU or CPU, diffusion, CLAHE, N4)"),
    "segment": (_SEG, "segment a volume: threshold, Otsu, region growing or an AI model"),
    "evaluate": (_SEG, "compare a segmentation with a reference (Dice, HD95, ...)"),
    "lesions": (_SEG, "detect lesions: connected components -> points and a table"),
    "explain": (_SEG, "saliency map (Grad-CAM or gradient x input) of a model for one label"),
    "train": (_TRAIN, "train (or fine-tune) a segmentation model on labelled volumes"),
    "fine-tune": (_TRAIN, "fine-tune a model on one corrected case (volume + segmentation)"),
    "export": (_TRAIN, "fp16 TorchScript / ONNX exports of a bundle, checked and timed"),
    "register": (_REGISTER, "intensity-based (MI) registration of two volumes"),
    "icp": (_REGISTER, "ICP surface registration"),
    "landmarks": (_REGISTER, "paired-landmark registration"),
    "download-base-data": (_PLAN, "download matRad's photon base data (SHA-256 checked) into the user cache"),
    "dose": (_PLAN, "forward photon dose for given beams and weights"),
    "plan": (_PLAN, "photon plan: beams, dose-influence matrix, fluence optimisation"),
    "dvh": (_EVALUATION, "DVH tables and dose metrics of structures (D98, D95, Dmean, Vx, CI, HI, GI)"),
    "gamma": (_EVALUATION, "3D gamma index of an evaluated dose against a reference dose"),
    "isodose": (_EVALUATION, "isodose surfaces (models) and legend of a dose volume"),
    "rt-import": (_EVALUATION, "convert RTDOSE/RTSTRUCT/RTPLAN files to MedAI files"),
    "rt-export": (_EVALUATION, "write a dose and/or segmentation as RTDOSE/RTSTRUCT"),
    "contour-qa": (
        "MedAIPlanLib.contour_qa.commands",
        "dose-aware comparison of two structure sets (and model uncertainty bands)",
    ),
    "batch": ("MedAICommonLib.cohort.commands", "run a pipeline of medai steps over a cohort (Dask)"),
}


def command_module(command: str) -> str | None:
    """The module that registers ``command`` (None for an unknown command)."""
    entry = COMMANDS.get(command)
    return entry[0] if entry else None


def command_modules() -> list[str]:
    """Every command module, each once, in the order of ``medai --help``."""
    return list(dict.fromkeys(module for module, _ in COMMANDS.values()))
