"""Figures a clinician can read: slices shown as Slicer shows them, labelled from the geometry.

Arrays are KJI with a :class:`~MedAICommonLib.geometry.Geometry` (RAS or LPS). Display convention as in
Slicer's slice views: axial with anterior up and the patient's right on the viewer's left (radiological),
coronal with superior up and the patient's right on the left, sagittal with superior up and anterior on
the left. The edge letters (R/L/A/P/S/I) are computed from the grid's direction matrix, never assumed.
Helpers add colour bars with units, structure outlines and isodose lines with legends, and DVH curves.
Only numpy and matplotlib (Agg) are used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Geometry

PLANES = ("axial", "coronal", "sagittal")
_NORMAL = {"axial": 2, "coronal": 1, "sagittal": 0}  # RAS component normal to the plane
# (RAS component, sign) that display rows and columns run towards (row 0 at the top, column 0 on the left).
_ROWS_COLS = {"axial": ((1, -1), (0, -1)), "coronal": ((2, -1), (0, -1)), "sagittal": ((2, -1), (1, -1))}
_LETTERS = ("RL", "AP", "SI")  # positive, negative direction of each RAS component
STRUCTURE_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


@dataclass
class SliceView:
    """A 2D slice ready to show: ``image`` rows top to bottom, columns left to right.

    ``index``: slice index along the array axis ``array_axis`` (0 = k, 1 = j, 2 = i) of the KJI input;
    ``position_mm``: RAS coordinate of the slice along the plane's normal (S for axial, A for coronal,
    R for sagittal); ``edges``: orientation letter at each image edge; ``extent``: matplotlib extent (mm).
    """

    image: np.ndarray
    plane: str
    index: int
    array_axis: int
    position_mm: float
    edges: dict
    extent: tuple

    @property
    def label(self) -> str:
        """E.g. ``"axial S -40.0 mm"`` (Slicer's slice-offset wording)."""
        return f"{self.plane} {'RAS'[_NORMAL[self.plane]]} {self.position_mm:.1f} mm"


def _letter(vector: np.ndarray) -> str:
    """The patient direction a RAS vector mostly points to (R, L, A, P, S or I)."""
    c = int(np.argmax(np.abs(vector)))
    return _LETTERS[c][0 if vector[c] > 0 else 1]


def _axis_of_component(direction_ras: np.ndarray) -> dict:
    """RAS component -> array axis (0 = k, 1 = j, 2 = i) that mostly runs along it."""
    owner = {}
    for axis in range(3):
        column = direction_ras[:, 2 - axis]
        owner.setdefault(int(np.argmax(np.abs(column))), axis)
    if len(owner) != 3:
        raise ValueError(
            "The grid is too oblique to show in patient planes (two axes share one direction); "
            "resample it onto an axis-aligned grid first."
        )
    return owner


def slice_view(volume_kji: np.ndarray, geometry: Geometry, plane: str, index: int | None = None) -> SliceView:
    """The ``plane`` slice (``axial``, ``coronal``, ``sagittal``) of a KJI volume in Slicer's display convention.

    ``index``: slice along the array axis normal to the plane (default: the middle). Raises ValueError for an
    unknown plane or an index outside the volume.
    """
    if plane not in PLANES:
        raise ValueError(f"Unknown plane {plane!r}; use one of {', '.join(PLANES)}.")
    volume = np.asarray(volume_kji)
    ras = geometry.to_space("RAS")
    owner = _axis_of_component(ras.direction)
    normal_axis = owner[_NORMAL[plane]]
    n = volume.shape[normal_axis]
    index = n // 2 if index is None else int(index)
    if not 0 <= index < n:
        raise ValueError(f"Slice index {index} outside 0..{n - 1} of the {plane} axis.")
    (row_c, row_s), (col_c, col_s) = _ROWS_COLS[plane]
    row_axis, col_axis = owner[row_c], owner[col_c]
    image = np.take(volume, index, axis=normal_axis)
    if row_axis > col_axis:
        image = image.T
    vectors = {}
    for name, axis, component, sign in (("rows", row_axis, row_c, row_s), ("cols", col_axis, col_c, col_s)):
        vector = ras.direction[:, 2 - axis]
        if np.sign(vector[component]) != sign:
            image = np.flip(image, 0 if name == "rows" else 1)
            vector = -vector
        vectors[name] = vector
    edges = {
        "top": _letter(-vectors["rows"]),
        "bottom": _letter(vectors["rows"]),
        "left": _letter(-vectors["cols"]),
        "right": _letter(vectors["cols"]),
    }
    centre = np.array([(s - 1) / 2.0 for s in volume.shape], float)
    centre[normal_axis] = index
    position = float(ras.index_to_point(centre[::-1][None])[0][_NORMAL[plane]])
    spacing_kji = np.array(ras.spacing)[::-1]
    height, width = image.shape[0] * spacing_kji[row_axis], image.shape[1] * spacing_kji[col_axis]
    return SliceView(np.ascontiguousarray(image), plane, index, normal_axis, position, edges, (0, width, height, 0))


def largest_section(mask_kji: np.ndarray, geometry: Geometry, plane: str = "axial") -> int:
    """Index (along the plane's normal array axis) of the slice where ``mask_kji`` has its largest area.

    Raises ValueError for an empty mask: there is no slice showing it.
    """
    mask = np.asarray(mask_kji, bool)
    if not mask.any():
        raise ValueError("The structure is empty; there is no slice that shows it.")
    axis = _axis_of_component(geometry.to_space("RAS").direction)[_NORMAL[plane]]
    areas = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(areas))


def show_slice(ax, view: SliceView, cmap="gray", vmin=None, vmax=None, alpha=1.0, masked_below=None):
    """Draw ``view`` on ``ax`` in millimetres (true aspect), ticks off; returns the image artist (letters: :func:`add_orientation_labels`).

    ``masked_below``: values below it are transparent (e.g. a dose wash's low-dose cut-off).
    """
    data = view.image if masked_below is None else np.ma.masked_where(view.image < masked_below, view.image)
    artist = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, extent=view.extent, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def add_orientation_labels(ax, view: SliceView) -> None:
    """Write the patient-direction letters at the four edges of ``ax`` (from the slice geometry)."""
    import matplotlib.patheffects as effects

    style = {
        "color": "yellow",
        "fontsize": 11,
        "fontweight": "bold",
        "transform": ax.transAxes,
        "path_effects": [effects.withStroke(linewidth=2, foreground="black")],
    }
    ax.text(0.02, 0.5, view.edges["left"], ha="left", va="center", **style)
    ax.text(0.98, 0.5, view.edges["right"], ha="right", va="center", **style)
    ax.text(0.5, 0.98, view.edges["top"], ha="center", va="top", **style)
    ax.text(0.5, 0.02, view.edges["bottom"], ha="center", va="bottom", **style)


def add_colorbar(fig, ax, artist, label: str):
    """A colour bar beside ``ax`` with ``label`` (give the unit, e.g. ``"CT (HU)"``, ``"Dose (Gy)"``)."""
    bar = fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label(label)
    return bar


def _grid_xy(view: SliceView):
    rows, cols = view.image.shape
    x = (np.arange(cols) + 0.5) * view.extent[1] / cols
    y = (np.arange(rows) + 0.5) * view.extent[2] / rows
    return x, y


def structure_colors(names) -> dict:
    """A distinct outline colour per structure name, in order (a 10-colour palette, repeated)."""
    return {name: STRUCTURE_PALETTE[i % len(STRUCTURE_PALETTE)] for i, name in enumerate(names)}


def draw_outlines(ax, views: dict, colors: dict | None = None, linestyle="-", suffix: str = "") -> list:
    """Outline each structure's 2D mask (``{name: SliceView of its mask}``); returns legend handles.

    Structures absent from the slice are listed in the legend as ``"name (not in slice)"``.
    """
    from matplotlib.lines import Line2D

    colors = colors or structure_colors(views)
    handles = []
    for name, view in views.items():
        mask = np.asarray(view.image, float)
        present = mask.any() and not mask.all()
        if present:
            x, y = _grid_xy(view)
            ax.contour(x, y, mask, levels=[0.5], colors=[colors[name]], linewidths=1.4, linestyles=linestyle)
        handles.append(
            Line2D(
                [],
                [],
                color=colors[name],
                lw=1.6,
                linestyle=linestyle,
                label=f"{name}{suffix}" + ("" if present else " (not in slice)"),
            )
        )
    return handles


ISODOSE_COLORS = ("#00ffff", "#ffff00", "#ff00ff", "#ffffff", "#39ff14", "#000000")
"""Isodose line colours, lowest level first (apart from the structure palette's first six; legends sit on
:data:`LEGEND_FACE` grey so that yellow and white lines show)."""
LEGEND_FACE = "#b4b4b4"


def draw_isodose(ax, dose_view: SliceView, levels_gy, reference_gy: float | None = None) -> list:
    """Isodose lines of a dose slice (Gy) at ``levels_gy``; returns legend handles ``"57.0 Gy (95%)"``.

    ``reference_gy`` (the prescription) gives the percentages; without it only Gy is shown.
    """
    from matplotlib.lines import Line2D

    levels = sorted(float(v) for v in levels_gy if v > 0)
    x, y = _grid_xy(dose_view)
    handles = []
    for i, level in enumerate(levels):
        color = ISODOSE_COLORS[i % len(ISODOSE_COLORS)]
        present = dose_view.image.min() < level < dose_view.image.max()
        if present:
            ax.contour(x, y, dose_view.image, levels=[level], colors=[color], linewidths=1.2)
        text = f"{level:.1f} Gy" + (f" ({100 * level / reference_gy:.0f}%)" if reference_gy else "")
        handles.append(Line2D([], [], color=color, lw=1.4, label=text + ("" if present else " (not in slice)")))
    return handles


def legend_below(ax, handles: list, title: str | None = None, columns: int = 2, size: float = 7):
    """A legend under ``ax`` (outside the image, so nothing of the anatomy is hidden)."""
    if not handles:
        return None
    return ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.01),
        ncol=columns,
        fontsize=size,
        title=title,
        title_fontsize=size,
        facecolor=LEGEND_FACE,
        framealpha=1.0,
    )


def draw_dvh(
    ax, curves: dict, colors: dict | None = None, prescription_gy: float | None = None, legend_size: float = 8
) -> None:
    """Cumulative DVH curves ``{name: (dose Gy, volume %)}`` on ``ax``, with axes in Gy and %, and a legend."""
    colors = colors or structure_colors(curves)
    for name, (dose_gy, volume) in curves.items():
        ax.plot(np.asarray(dose_gy), np.asarray(volume), label=name, color=colors.get(name))
    if prescription_gy:
        ax.axvline(prescription_gy, color="k", lw=0.8, ls="--", label=f"prescription {prescription_gy:g} Gy")
    ax.set_xlabel("Dose (Gy)")
    ax.set_ylabel("Volume (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=legend_size)


def draw_anatomy_panel(
    fig,
    ax,
    image_kji: np.ndarray,
    geometry: Geometry,
    plane: str,
    index: int,
    title: str,
    structures: dict | None = None,
    colors: dict | None = None,
    dose_kji: np.ndarray | None = None,
    isodose_gy=(),
    prescription_gy: float | None = None,
    window=(-400.0, 400.0),
    image_label: str = "CT (HU)",
    cmap: str = "gray",
    reference: dict | None = None,
    legend: bool = True,
    position_known: bool = True,
) -> tuple[SliceView, list]:
    """One labelled slice: the image (colour bar ``image_label``), optional dose wash (colour bar Gy) with
    isodose lines, structure outlines, a legend of structures and isodose levels, orientation letters and a
    title ending in the slice position (mm). ``structures``: ``{name: KJI bool mask}`` and ``dose_kji`` on
    the image's grid; ``reference``: masks drawn dashed in the same colours, labelled "(truth)".
    ``legend=False`` leaves the legend to the caller; ``position_known=False`` (a grid without its true origin)
    titles the slice by index instead of millimetres. Returns the image's :class:`SliceView` and the
    legend handles.
    """
    view = slice_view(image_kji, geometry, plane, index)
    artist = show_slice(ax, view, cmap=cmap, vmin=window[0], vmax=window[1])
    handles = []
    if dose_kji is not None:
        dose_view = slice_view(dose_kji, geometry, plane, index)
        top = float(np.max(dose_kji))
        if top > 0:
            wash = show_slice(ax, dose_view, cmap="jet", vmin=0, vmax=top, alpha=0.45, masked_below=0.1 * top)
            add_colorbar(fig, ax, wash, "Dose (Gy)")
        handles += draw_isodose(ax, dose_view, isodose_gy, prescription_gy)
    else:
        add_colorbar(fig, ax, artist, image_label)
    if structures:
        colors = colors or structure_colors(structures)
        views = {name: slice_view(mask, geometry, plane, index) for name, mask in structures.items()}
        handles = draw_outlines(ax, views, colors, suffix=" (MedAI)" if reference else "") + handles
    if reference:
        colors = colors or structure_colors(reference)
        views = {name: slice_view(mask, geometry, plane, index) for name, mask in reference.items()}
        handles += draw_outlines(ax, views, colors, linestyle="--", suffix=" (truth)")
    add_orientation_labels(ax, view)
    ax.set_title(f"{title}\n{view.label if position_known else f'{plane} slice {index}'}", fontsize=9)
    if legend:
        legend_below(ax, handles)
    return view, handles
