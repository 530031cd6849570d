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

from . import bridge
from .bridge.segmentations import SegmentInfo
from .phantoms import STRUCTURE_COLORS, STRUCTURES, make_ct_phantom
from .progress import Progress
from .report import Report

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

    def add_panel(self, title: str, image: np.ndarray, overlay: np.ndarray | None = None,
                  cmap: str = "gray", overlay_cmap: str = "autumn", vmin=None, vmax=None) -> None:
        """Add a 2D panel (image and optional overlay, in display orientation) to the overview."""
        self.panels.append({"title": title, "image": np.asarray(image), "overlay": overlay,
                            "cmap": cmap, "overlay_cmap": overlay_cmap, "vmin": vmin, "vmax": vmax})


def axial_slice(array_kji: np.ndarray, k: int | None = None) -> np.ndarray:
    """Axial slice ``k`` in radiological display orientation, for grids with identity RAS direction.

    Rows follow j (+y = anterior), columns i (+x = the patient's right in RAS); flipping both puts
    anterior at the top and the patient's right on the viewer's left, as Slicer's Red view shows it.
    """
    k = array_kji.shape[0] // 2 if k is None else k
    return np.flipud(np.fliplr(array_kji[k]))


def prepare_inputs(context: DemoContext) -> None:
    """Generate the phantom, write it as NRRD/.seg.nrrd through storage nodes and load it back."""
    phantom = make_ct_phantom()
    inputs = context.output_dir / "inputs"
    ct = bridge.create_volume(context.scene, phantom.ct, phantom.geometry, "phantom CT")
    segments = [SegmentInfo(v, n, STRUCTURE_COLORS[v]) for v, n in STRUCTURES.items()]
    structures = bridge.create_segmentation(context.scene, phantom.labels, phantom.geometry, segments,
                                            "phantom structures", reference_volume=ct)
    ct_path = bridge.save_node(ct, inputs / "phantom_ct.nrrd")
    seg_path = bridge.save_node(structures, inputs / "phantom_structures.seg.nrrd")
    bridge.remove_nodes(context.scene, [ct, structures])
    context.ct_node = bridge.load_volume(context.scene, ct_path)
    context.structures_node = bridge.load_segmentation(context.scene, seg_path)
    context.report.inputs.update({"ct": str(ct_path), "structures": str(seg_path)})
    array, _ = bridge.array_from_volume(context.ct_node)
    k = int(np.argwhere(phantom.labels == 6)[:, 0].mean())
    context.nodes["display_k"] = k
    context.add_panel("Phantom CT (axial)", axial_slice(array, k), vmin=-400, vmax=400)


def available_steps() -> dict[str, str]:
    """The module demo steps installed (name -> module), in pipeline order."""
    return {step: module for step, module in DEMO_STEPS.items()
            if importlib.util.find_spec(module.split(".")[0]) is not None and importlib.util.find_spec(module)}


def write_overview(context: DemoContext, path: Path) -> Path:
    """Write the panels side by side as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = context.panels
    columns = min(4, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, panel in zip(axes.ravel(), panels):
        ax.imshow(panel["image"], cmap=panel["cmap"], vmin=panel["vmin"], vmax=panel["vmax"])
        if panel["overlay"] is not None:
            overlay = np.ma.masked_where(np.asarray(panel["overlay"]) == 0, panel["overlay"])
            ax.imshow(overlay, cmap=panel["overlay_cmap"], alpha=0.5)
        ax.set_title(panel["title"], fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def run_demo(scene, output_dir, report: Report, progress: Progress | None = None) -> DemoContext:
    """Run the whole demo pipeline into ``output_dir``; returns the context with its nodes."""
    context = DemoContext(scene=scene, output_dir=Path(output_dir), report=report,
                          progress=progress or Progress())
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
