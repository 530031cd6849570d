"""Figures a clinician can read: slices oriented and labelled from the geometry (MedAICommonLib.figures)."""

from __future__ import annotations

import numpy as np
import pytest

from MedAICommonLib import figures
from MedAICommonLib.geometry import Geometry
from MedAICommonLib.synthetic.phantoms import make_ct_phantom


def test_axial_view_is_radiological_for_ras_and_lps_identity_grids():
    """Identity RAS: i runs to the patient's right, so the right is on the image left; identity LPS: i runs to the
    left, and the same letters come out without a flip."""
    volume = np.arange(4 * 5 * 6, dtype=float).reshape(4, 5, 6)
    ras = figures.slice_view(volume, Geometry(shape_kji=volume.shape), "axial", 1)
    lps = figures.slice_view(volume, Geometry(space="LPS", shape_kji=volume.shape), "axial", 1)
    for view in (ras, lps):
        assert view.edges == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert np.array_equal(ras.image, volume[1, ::-1, ::-1])
    assert np.array_equal(lps.image, volume[1])
    sagittal = figures.slice_view(volume, Geometry(shape_kji=volume.shape), "sagittal", 2)
    assert sagittal.edges == {"top": "S", "bottom": "I", "left": "A", "right": "P"}
    assert figures.slice_view(volume, Geometry(shape_kji=volume.shape), "coronal", 2).edges["left"] == "R"


def test_flipped_grid_shows_the_same_anatomy():
    """The phantom on an identity grid and on one whose i and k axes run backwards: the same image, the same
    letters, the same slice position, because orientation comes from the direction matrix."""
    plain = make_ct_phantom(noise_hu=0.0)
    flipped = make_ct_phantom(noise_hu=0.0, direction=np.diag([-1.0, 1.0, -1.0]))
    for plane in figures.PLANES:
        k_plain = figures.largest_section(plain.labels == 6, plain.geometry, plane)
        k_flipped = figures.largest_section(flipped.labels == 6, flipped.geometry, plane)
        a = figures.slice_view(plain.ct, plain.geometry, plane, k_plain)
        b = figures.slice_view(flipped.ct, flipped.geometry, plane, k_flipped)
        assert a.edges == b.edges
        assert a.position_mm == pytest.approx(b.position_mm)
        np.testing.assert_allclose(a.image, b.image)


def test_largest_section_holds_the_most_of_the_structure():
    phantom = make_ct_phantom(noise_hu=0.0)
    liver = phantom.labels == 5
    k = figures.largest_section(liver, phantom.geometry, "axial")
    areas = liver.sum(axis=(1, 2))
    assert areas[k] == areas.max() > 0
    with pytest.raises(ValueError, match="empty"):
        figures.largest_section(np.zeros_like(liver), phantom.geometry, "axial")


def test_anatomy_panel_has_units_legend_and_letters():
    """The rendered panel: a colour bar labelled in Gy, a legend naming the structures and the isodose levels in Gy
    and %, the four orientation letters and the slice position in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phantom = make_ct_phantom(noise_hu=0.0)
    lesion = phantom.labels == 6
    dose = np.where(lesion, 60.0, 10.0)
    k = figures.largest_section(lesion, phantom.geometry, "axial")
    fig, ax = plt.subplots()
    view, _ = figures.draw_anatomy_panel(
        fig,
        ax,
        phantom.ct,
        phantom.geometry,
        "axial",
        k,
        "Dose",
        structures={"lesion": lesion},
        dose_kji=dose,
        isodose_gy=[30.0, 57.0],
        prescription_gy=60.0,
    )
    labels = [a.get_ylabel() for a in fig.axes if a is not ax]
    assert labels == ["Dose (Gy)"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["lesion", "30.0 Gy (50%)", "57.0 Gy (95%)"]
    assert {t.get_text() for t in ax.texts} == {"R", "L", "A", "P"}
    z = phantom.geometry.index_to_point(np.array([[0.0, 0.0, k]]))[0][2]
    assert f"S {z:.1f} mm" in ax.get_title()
    plt.close(fig)
