"""`medai register` takes the panel's settings (metric, sampling percentage, masks from segmentations or
label maps), so every transform type the panel offers can run in a worker process with the same result."""

import json

import numpy as np
import pytest

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.cli.main import main
from MedAICommonLib.geometry import rotation_matrix
from MedAICommonLib.synthetic.phantoms import make_ct_phantom

TURN_DEG = 5.0


@pytest.fixture
def turned_pair(scene, tmp_path):
    """Fixed and moving files (moving: the anatomy turned 5 degrees about S), a body segmentation with a
    second segment, and a body label map, all on the fixed grid."""
    phantom = make_ct_phantom(shape_kji=(24, 40, 40), spacing=(4.0, 4.0, 5.0), noise_hu=5.0)
    turned = make_ct_phantom(
        shape_kji=(24, 40, 40), spacing=(4.0, 4.0, 5.0), noise_hu=5.0, seed=1, direction=rotation_matrix("z", TURN_DEG)
    )
    files = {
        "fixed": bridge.save_node(
            bridge.create_volume(scene, phantom.ct, phantom.geometry, "f"), tmp_path / "fixed.nrrd"
        ),
        "moving": bridge.save_node(
            bridge.create_volume(scene, turned.ct, phantom.geometry, "m"), tmp_path / "moving.nrrd"
        ),
    }
    labels = (phantom.labels > 0).astype(np.uint8) + np.isin(
        phantom.labels, (2, 3)
    )  # 1 body without the lungs, 2 lungs
    segmentation = bridge.create_segmentation(
        scene, labels, phantom.geometry, [SegmentInfo(1, "body outline"), SegmentInfo(2, "lungs")], "masks"
    )
    files["segmentation"] = bridge.save_node(segmentation, tmp_path / "masks.seg.nrrd")
    files["labelmap"] = bridge.save_node(
        bridge.create_volume(scene, (labels > 0).astype(np.uint8), phantom.geometry, "body"), tmp_path / "body.nrrd"
    )
    return files, phantom


def _corner_error_mm(transform_path, scene, phantom) -> float:
    matrix = bridge.matrix_from_transform_node(bridge.load_transform(scene, transform_path))
    truth = np.eye(4)
    truth[:3, :3] = rotation_matrix("z", TURN_DEG)  # moving RAS -> fixed RAS
    corners = np.c_[phantom.geometry.index_to_point(np.array([[0, 0, 0], [39, 39, 23.0]])), np.ones(2)]
    return float(np.abs(corners @ (matrix - truth).T).max())


def test_register_with_metric_sampling_and_masks(turned_pair, scene, tmp_path):
    files, phantom = turned_pair
    out, report_path = tmp_path / "T.h5", tmp_path / "report.json"
    assert (
        main(
            [
                "register",
                str(files["fixed"]),
                str(files["moving"]),
                "--output-transform",
                str(out),
                "--preset",
                "ct-ct",
                "--metric",
                "meansquares",
                "--sampling-percentage",
                "50",
                "--fixed-mask",
                f"{files['segmentation']}:body outline",
                "--moving-mask",
                str(files["labelmap"]),
                "--report",
                str(report_path),
            ]
        )
        == 0
    )

    report = json.loads(report_path.read_text())
    assert report["parameters"]["metric"] == "meansquares"
    assert report["parameters"]["sampling_percentage"] == 50.0
    assert set(report["inputs"]) >= {"fixed_mask", "moving_mask"}
    assert report["device"].startswith("simpleitk")  # linear mean squares runs on SimpleITK
    assert _corner_error_mm(out, scene, phantom) < 2.5  # mm: half a 5 mm slice at the fixed volume's corners


def test_register_segmentation_mask_defaults_to_its_first_segment(turned_pair, scene, tmp_path):
    files, _ = turned_pair
    reports = {}
    for name, mask in (
        ("first", str(files["segmentation"])),
        ("named", f"{files['segmentation']}:body outline"),
        ("lungs", f"{files['segmentation']}:lungs"),
    ):
        reports[name] = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "register",
                    str(files["fixed"]),
                    str(files["moving"]),
                    "--output-transform",
                    str(tmp_path / f"{name}.h5"),
                    "--preset",
                    "ct-ct",
                    "--fixed-mask",
                    mask,
                    "--report",
                    str(reports[name]),
                ]
            )
            == 0
        )
    after = {name: json.loads(path.read_text())["metrics"]["mi_after"] for name, path in reports.items()}
    assert after["first"] == after["named"]
    assert after["lungs"] != after["first"]


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--fixed-mask", "{segmentation}:liver", "No segment 'liver'"),
        ("--moving-mask", "{labelmap}:body", "only a segmentation has segments to choose"),
    ],
)
def test_register_refuses_a_mask_it_cannot_use(turned_pair, tmp_path, capsys, option, value, expected):
    files, _ = turned_pair
    code = main(
        [
            "register",
            str(files["fixed"]),
            str(files["moving"]),
            "--output-transform",
            str(tmp_path / "T.h5"),
            option,
            value.format(**files),
        ]
    )
    assert code != 0
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "T.h5").exists()


@pytest.mark.parametrize("percentage", ["0", "150", "ten"])
def test_register_refuses_a_sampling_percentage_outside_0_to_100(turned_pair, tmp_path, capsys, percentage):
    files, _ = turned_pair
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "register",
                str(files["fixed"]),
                str(files["moving"]),
                "--output-transform",
                str(tmp_path / "T.h5"),
                "--sampling-percentage",
                percentage,
            ]
        )
    assert exit_info.value.code != 0
    assert "--sampling-percentage takes a percentage in (0, 100]" in capsys.readouterr().err
