"""Untrusted model files: a weights pickle that would run code is refused, and nothing runs."""

import os
import pickle

import pytest
import torch
from test_seg_inference import write_bundle

from MedAICommonLib import bridge
from MedAICommonLib.synthetic.phantoms import make_ct_phantom
from MedAISegLib.logic import MedAISegLogic


class _RunsCode:
    """Unpickling this calls os.system: what a malicious 'model.pt' does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_model_pickle_is_refused_and_runs_nothing(scene, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    marker = tmp_path / "pwned"
    with open(bundle / "models" / "model.pt", "wb") as handle:
        pickle.dump({"weight": _RunsCode(marker)}, handle)
    phantom = make_ct_phantom(shape_kji=(8, 16, 16))
    volume = bridge.create_volume(scene, phantom.ct, phantom.geometry, "ct")
    before = scene.GetNumberOfNodes()
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        MedAISegLogic(scene).segment_with_model([volume], str(bundle), device="cpu")
    assert not marker.exists()
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not marker.exists()
