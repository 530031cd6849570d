"""``medai denoise|segment|evaluate|lesions`` on real files, through the CLI entry point."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from test_seg_inference import THRESHOLD, write_bundle

from MedAICommonLib.cli.main import main
from MedAICommonLib.synthetic.phantoms import make_ct_phantom

from dicom_writer import write_ct_series


@pytest.fixture
def totalseg(shared_data):
    return shared_data / "segmentation/totalsegmentator"


def read_report(path):
    data = json.loads(path.read_text())
    assert set(data) >= {"command", "inputs", "outputs", "parameters", "metrics", "timings_s", "versions", "device"}
    return data


def segment_voxels(path, segment=0):
    """Voxel count of one segment of a .seg.nrrd (read back with SimpleITK, independent of Slicer)."""
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    return int((array > 0).sum()) if array.ndim == 3 else int((array[..., segment] > 0).sum())


def test_denoise_nlm_and_anisotropic(totalseg, tmp_path):
    src = totalseg / "example_ct_sm.nii.gz"
    for method in ("nlm", "anisotropic"):
        out, report = tmp_path / f"{method}.nrrd", tmp_path / f"{method}.json"
        extra = ["--search-radius", "1", "--device", "cpu"] if method == "nlm" else ["--iterations", "3"]
        assert main(["denoise", str(src), str(out), "--method", method, *extra, "--report", str(report)]) == 0
        data = read_report(report)
        assert data["parameters"]["method"] == method
        assert data["metrics"]["output_std"] < data["metrics"]["input_std"]
        result = sitk.ReadImage(str(out))
        original = sitk.ReadImage(str(src))
        assert result.GetSize() == original.GetSize()
        np.testing.assert_allclose(result.GetDirection(), original.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(result.GetOrigin(), original.GetOrigin(), atol=1e-3)


def test_segment_threshold_counts_the_right_voxels(totalseg, tmp_path):
    src = totalseg / "example_ct_sm.nii.gz"
    out, report = tmp_path / "bone.seg.nrrd", tmp_path / "r.json"
    assert (
        main(["segment", str(src), str(out), "--method", "threshold", "--lower", "300", "--report", str(report)]) == 0
    )
    expected = int((sitk.GetArrayFromImage(sitk.ReadImage(str(src))) >= 300).sum())
    assert segment_voxels(out) == expected
    assert read_report(report)["metrics"]["voxels"] == expected


def test_segment_with_bundle_from_the_command_line(shared_data, tmp_path):
    src = shared_data / "registration/monai-testing-data/anatomical.nii"
    bundle = write_bundle(tmp_path / "bundle")
    out, report = tmp_path / "head.seg.nrrd", tmp_path / "r.json"
    assert (
        main(["segment", str(src), str(out), "--model", str(bundle), "--device", "cpu", "--report", str(report)]) == 1
    )  # an untrusted bundle is refused
    assert not out.exists()
    assert (
        main(
            [
                "segment",
                str(src),
                str(out),
                "--model",
                str(bundle),
                "--device",
                "cpu",
                "--trust-bundle",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    data = read_report(report)
    assert data["metrics"]["segments"] == ["bright tissue"]
    assert segment_voxels(out) == int((sitk.GetArrayFromImage(sitk.ReadImage(str(src))) > THRESHOLD).sum())


def test_segment_region_growing_from_a_dicom_series(tmp_path):
    phantom = make_ct_phantom(shape_kji=(10, 40, 40), spacing=(6.0, 6.0, 6.0), noise_hu=0.0)
    write_ct_series(tmp_path / "series", phantom.ct, spacing_xyz=(6.0, 6.0, 6.0))
    # seed: the middle of the right lung, in RAS of the DICOM grid (origin LPS (-50, -40, 10))
    kji = np.argwhere(phantom.labels == 3).mean(axis=0).round()
    lps = np.array([-50.0, -40.0, 10.0]) + kji[::-1] * 6.0
    seed = f"{-lps[0]},{-lps[1]},{lps[2]}"
    out, report = tmp_path / "lung.seg.nrrd", tmp_path / "r.json"
    assert (
        main(
            [
                "segment",
                str(tmp_path / "series"),
                str(out),
                "--method",
                "region-growing",
                f"--seeds={seed}",
                "--lower",
                "-1000",
                "--upper",
                "-500",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert segment_voxels(out) == int((phantom.labels == 3).sum())


def test_evaluate_reports_metrics_per_label(totalseg, tmp_path):
    ref, pred = totalseg / "example_seg.nii.gz", totalseg / "example_seg_fast.nii.gz"
    report = tmp_path / "r.json"
    assert main(["evaluate", str(ref), str(pred), "--table", str(tmp_path / "t.csv"), "--report", str(report)]) == 0
    metrics = read_report(report)["metrics"]["segments"]
    f = sitk.LabelOverlapMeasuresImageFilter()
    f.Execute(
        sitk.Cast(sitk.ReadImage(str(pred)), sitk.sitkUInt16), sitk.Cast(sitk.ReadImage(str(ref)), sitk.sitkUInt16)
    )
    for label in (1, 5, 52):
        assert metrics[str(label)]["dice"] == pytest.approx(f.GetDiceCoefficient(label), abs=1e-9)
        assert metrics[str(label)]["hd95_mm"] >= 0
    assert (tmp_path / "t.csv").read_text().startswith('"segment","matched","dice"')


def test_lesions_from_a_label_map(totalseg, tmp_path):
    labels = sitk.ReadImage(str(totalseg / "example_seg.nii.gz"))
    kidneys = sitk.Cast((labels == 2) | (labels == 3), sitk.sitkUInt8)
    sitk.WriteImage(kidneys, str(tmp_path / "kidneys.nii.gz"))
    report = tmp_path / "r.json"
    assert (
        main(
            [
                "lesions",
                str(tmp_path / "kidneys.nii.gz"),
                "--intensity",
                str(totalseg / "example_ct_sm.nii.gz"),
                "--min-volume",
                "1000",
                "--points",
                str(tmp_path / "k.mrk.json"),
                "--table",
                str(tmp_path / "k.csv"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    data = read_report(report)
    assert data["metrics"]["count"] == 2
    right, left = sorted(data["metrics"]["lesions"], key=lambda les: les["centroid_ras_mm"][0])
    assert right["centroid_ras_mm"][0] < left["centroid_ras_mm"][0]  # RAS: +x is the patient's left
    points = json.loads((tmp_path / "k.mrk.json").read_text())["markups"][0]["controlPoints"]
    assert len(points) == 2


def test_segment_needs_a_method_or_model(totalseg, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(totalseg / "example_ct_sm.nii.gz"), str(tmp_path / "x.seg.nrrd")])
    assert (
        main(
            [
                "segment",
                str(totalseg / "example_ct_sm.nii.gz"),
                str(tmp_path / "x.seg.nrrd"),
                "--method",
                "region-growing",
            ]
        )
        == 1
    )
    assert "seeds" in capsys.readouterr().err


def test_segment_bundle_with_tta_probabilities_and_uncertainty(shared_data, tmp_path):
    src = shared_data / "registration/monai-testing-data/anatomical.nii"
    bundle = write_bundle(tmp_path / "bundle")
    out, report = tmp_path / "head.seg.nrrd", tmp_path / "r.json"
    prob, unc = tmp_path / "prob.nrrd", tmp_path / "entropy.nrrd"
    assert (
        main(
            [
                "segment",
                str(src),
                str(out),
                "--model",
                str(bundle),
                "--device",
                "cpu",
                "--trust-bundle",
                "--tta",
                "--probabilities",
                str(prob),
                "--uncertainty",
                str(unc),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    source = sitk.ReadImage(str(src))
    x = sitk.GetArrayFromImage(source).astype(np.float64)
    p1 = 1.0 / (1.0 + np.exp(-0.01 * (x - THRESHOLD)))  # the test network's softmax

    def on_source_grid(path):  # Slicer may store the voxels in another axis order: compare in physical space
        image = sitk.ReadImage(str(path))
        return sitk.GetArrayFromImage(
            sitk.Resample(image, source, sitk.Transform(), sitk.sitkNearestNeighbor, -1.0, image.GetPixelID())
        )

    np.testing.assert_allclose(on_source_grid(prob), p1, atol=1e-5)
    entropy = on_source_grid(unc)
    q = np.clip(np.stack([1 - p1, p1]), 1e-8, None)
    np.testing.assert_allclose(entropy, -(q * np.log(q)).sum(axis=0), atol=1e-4)  # nats
    assert entropy[np.abs(x - THRESHOLD) < 10].min() > 0.69  # undecided voxels are the uncertain ones
    data = read_report(report)
    assert data["metrics"]["medai_inferer_because"] == ["flip TTA", "probabilities", "entropy"]
    assert set(data["outputs"]) >= {"probability", "uncertainty"}
    assert segment_voxels(out) == int((x > THRESHOLD).sum())
