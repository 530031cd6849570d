"""``medai demo``: the end-to-end pipeline on generated data, extended by each module.

The common part makes a synthetic CT phantom, saves it through Slicer's storage node and
loads it back into the scene. Each module package may provide ``demo.py`` with
``run(context: DemoContext)`` that adds its step (segmentation, registration, plan), adds
``(title, image2d, overlay2d | None)`` panels for the overview PNG and records outputs and
metrics in the report.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import bridge
from .. import figures
from ..bridge.segmentations import SegmentInfo
from .phantoms import STRUCTURE_COLORS, STRUCTURES, make_ct_phantom
from ..progress import Progress
from ..report import Report

DEMO_STEPS = {
    "segmentation": "MedAISegLib.demo",
    "registration": "MedAIRegisterLib.demo",
    "plan": "MedAIPlanLib.demo",
    "plan evaluation": "MedAIPlanLib.evaluation_demo",
}
"""Demo step name -> module with ``run(context)``, in pipeline order."""


class DemoStepSkipped(Exception):
    """Raised by a demo step that cannot run here (e.g. missing base data); the reason is reported."""


@dataclass
class DemoContext:
    """What the demo steps share: the scene, the output folder, the input nodes, the report."""

    scene: object
    output_dir: Path
    report: Report
    progress: Progress
    ct_node: object = None
    structures_node: object = None
    panels: list = field(default_factory=list)
    nodes: dict = field(default_factory=dict)

    def add_panel(self, title: str, draw, **meta) -> None:
        """Add an overview panel: ``draw(fig, ax)`` draws it (see :mod:`MedAICommonLib.figures`).

        ``meta`` records what it shows (e.g. ``plane``, ``index``, ``structure``) for the report and tests.
        """
        self.panels.append({"title": title, "draw": draw, **meta})


def axial_slice(array_kji: np.ndarray, k: int | None = None) -> np.ndarray:
    """Axial slice ``k`` in radiological display orientation, for grids with identity RAS direction.

    Rows follow j (+y = anterior), columns i (+x = the patient's right in RAS); flipping both puts
    anterior at the top and the patient's right on the viewer's left, as Slicer's Red view shows it.
    For any grid use :func:`MedAICommonLib.figures.slice_view`.
    """
    k = array_kji.shape[0] // 2 if k is None else k
    return np.flipud(np.fliplr(array_kji[k]))


def prepare_inputs(context: DemoContext) -> None:
    """Generate the phantom, write it as NRRD/.seg.nrrd through storage nodes and load it back."""
    phantom = make_ct_phantom()
    inputs = context.output_dir / "inputs"
    ct = bridge.create_volume(context.scene, phantom.ct, phantom.geometry, "phantom CT")
    segments = [SegmentInfo(v, n, STRUCTURE_COLORS[v]) for v, n in STRUCTURES.items()]
    structures = bridge.create_segmentation(
        context.scene, phantom.labels, phantom.geometry, segments, "phantom structures", reference_volume=ct
    )
    ct_path = bridge.save_node(ct, inputs / "phantom_ct.nrrd")
    seg_path = bridge.save_node(structures, inputs / "phantom_structures.seg.nrrd")
    bridge.remove_nodes(context.scene, [ct, structures])
    context.ct_node = bridge.load_volume(context.scene, ct_path)
    context.structures_node = bridge.load_segmentation(context.scene, seg_path)
    context.report.inputs.update({"ct": str(ct_path), "structures": str(seg_path)})
    array, geometry = bridge.array_from_volume(context.ct_node)
    truth, _ = bridge.segment_masks(context.structures_node, geometry)
    k = figures.largest_section(truth["lesion"], geometry, "axial")
    context.nodes.update({"display_k": k, "ct_array": array, "ct_geometry": geometry, "truth_masks": truth})
    colors = figures.structure_colors(truth)
    context.add_panel(
        "Phantom CT and its structures",
        lambda fig, ax: figures.draw_anatomy_panel(
            fig, ax, array, geometry, "axial", k, "Phantom CT and its structures", structures=truth, colors=colors
        ),
        plane="axial",
        index=k,
        structure="lesion",
    )


def available_steps() -> dict[str, str]:
    """The module demo steps installed (name -> module), in pipeline order."""
    return {
        step: module
        for step, module in DEMO_STEPS.items()
        if importlib.util.find_spec(module.split(".")[0]) is not None and importlib.util.find_spec(module)
    }


def overview_figure(context: DemoContext):
    """The overview figure: every panel drawn in a grid (3 columns); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = context.panels
    columns = min(3, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 5.6 * rows), squeeze=False, layout="constrained")
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels):
        panel["draw"](fig, ax)
    fig.suptitle("MedAI demo on a synthetic torso phantom (slices as in Slicer: patient right on the image left)")
    return fig


def write_overview(context: DemoContext, path: Path) -> Path:
    """Write the overview panels as one PNG."""
    import matplotlib.pyplot as plt

    fig = overview_figure(context)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_demo(scene, output_dir, report: Report, progress: Progress | None = None) -> DemoContext:
    """Run the whole demo pipeline into ``output_dir``; returns the context with its nodes."""
    context = DemoContext(scene=scene, output_dir=Path(output_dir), report=report, progress=progress or Progress())
    context.output_dir.mkdir(parents=True, exist_ok=True)
    steps = available_steps()
    with report.timed("inputs"):
        context.progress.update("inputs", 0.0)
        prepare_inputs(context)
    for index, (step, module) in enumerate(steps.items()):
        context.progress.update(step, (index + 1) / (len(steps) + 2))
        with report.timed(step):
            try:
                importlib.import_module(module).run(context)
            except DemoStepSkipped as reason:
                report.metrics.setdefault("skipped_steps", {})[step] = str(reason)
    overview = write_overview(context, context.output_dir / "overview.png")
    report.outputs["overview"] = str(overview)
    report.parameters["steps"] = ["inputs", *steps]
    context.progress.update("done", 1.0)
    return context
