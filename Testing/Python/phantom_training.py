"""Shared by the training test files: one torch thread per test, and Dice of ``medai segment`` on new phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAICommonLib.geometry import Geometry
from MedAISegLib.learning.phantom_cases import make_phantom_case
from MedAISegLib.learning.training import dice_per_class


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread during each test, the previous count restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def segment_dice(bundle, seeds, tmp_path, scene, **kwargs) -> list[float]:
    """Dice of ``medai segment --model bundle`` against the truth of new phantoms."""
    scores = []
    for seed in seeds:
        image, truth = make_phantom_case(seed, **kwargs)
        src, out = tmp_path / f"new{seed}.nii.gz", tmp_path / f"new{seed}.seg.nrrd"
        sitk.WriteImage(image, str(src))
        assert main(["segment", str(src), str(out), "--model", str(bundle), "--device", "cpu"]) == 0
        seg = bridge.load_segmentation(scene, out)
        reference = Geometry.from_sitk(truth).to_space("RAS")
        try:
            labels, _, _ = bridge.labelmap_from_segmentation(seg, reference=reference)
        except bridge.BridgeError:  # Slicer cannot export an all-empty segmentation: nothing was found
            labels = np.zeros(reference.shape_kji, np.uint8)
        scores.append(dice_per_class(labels, sitk.GetArrayFromImage(truth), [1])[1])
    return scores
