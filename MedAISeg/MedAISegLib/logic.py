"""MedAISeg Logic: node-level preprocessing, classical and AI segmentation, clean-up, lesions, evaluation.

Every method takes MRML nodes, converts them only through :mod:`MedAICommonLib.bridge`, computes
first and creates output nodes only when the run succeeded; inputs are never modified. Passing an
existing ``output_node`` (``table_node``, ``markups_node``) updates it instead of making a new one.
Progress goes to a :class:`MedAICommonLib.progress.Progress` (``progress=``), whose ``cancel()``
stops a run at its next step with :class:`~MedAICommonLib.progress.CancelledError`. Bad input
raises ``ValueError`` with a message that says what to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.bridge.volumes import require_grids_overlap
from MedAICommonLib.devices import select_device
from MedAICommonLib.progress import Progress
from MedAICommonLib.runtime import get_scene

from MedAISegLib.preprocessing import filters

from MedAISegLib.postprocessing import postprocess, threshold
from MedAISegLib.postprocessing.evaluation import METRICS, evaluate_labelmaps
from MedAISegLib.postprocessing.lesions import detect_lesions
from MedAISegLib.results import (R, DenoiseResult, EvaluationResult, LesionResult, ModelSegmentationResult, OtsuResult,
                                 PostprocessResult, RegionGrowingResult, SegmentationResult, ThresholdResult,
                                 expect_result)

PREPROCESS_METHODS = ("nlm", "anisotropic", "curvature", "clahe", "histogram", "n4", "normalize")
SEGMENT_COLORS = {"threshold": (0.90, 0.60, 0.20), "otsu": (0.30, 0.70, 0.90), "region": (0.40, 0.85, 0.40)}


class MedAISegLogic:
    """Headless Logic of MedAISeg, bound to ``scene`` (default: :func:`MedAICommonLib.runtime.get_scene`).

    After each run ``self.last_result`` holds what the run measured (thresholds, timings, devices,
    per-segment metrics, lesions) for reports, as one of the dataclasses of :mod:`MedAISegLib.results`;
    :meth:`last_result_as` returns it checked to be the kind expected.
    """

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else get_scene()
        self.last_result: SegmentationResult | None = None

    def last_result_as(self, kind: type[R]) -> R:
        """``self.last_result`` checked to be a ``kind`` (e.g. :class:`~MedAISegLib.results.EvaluationResult`)."""
        return expect_result(self.last_result, kind)

    # --- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _progress(progress) -> Progress:
        return progress if isinstance(progress, Progress) else Progress(progress)

    def _segmentation(self, labels, geometry, segments, name, output_node, reference_volume):
        return bridge.create_segmentation(self.scene, labels.astype(np.uint16), geometry, segments, name,
                                          node=output_node, reference_volume=reference_volume)

    # --- preprocessing ---------------------------------------------------------------------
    def denoise(self, input_node, method: str = "nlm", output_node=None, device: str = "auto", progress=None,
                **params):
        """Filter a scalar volume into a new (or the given) volume node named '<input> <method>'.

        ``method``: ``nlm`` (params h, sigma, patch_radius, search_radius; torch on ``device``),
        ``anisotropic`` / ``curvature`` (iterations, conductance), ``clahe`` (alpha, beta, radius),
        ``histogram``, ``n4`` (shrink), ``normalize`` (mode zscore|percentile). Intensity units kept
        except for ``normalize``.
        """
        if method not in PREPROCESS_METHODS:
            raise ValueError(f"Unknown preprocessing method {method!r}; choose one of {', '.join(PREPROCESS_METHODS)}.")
        bridge.require_scalar_volume(input_node)
        progress = self._progress(progress)
        progress.update(f"{method}: reading", 0.05)
        image = bridge.volume_to_sitk(input_node)
        progress.update(method, 0.1)
        if method == "nlm":
            torch_device = select_device(device)
            sub = progress.sub(0.1, 0.95)
            result = filters.nlm(image, device=torch_device, progress=lambda f: sub.update("nlm", f), **params)
            self.last_result = DenoiseResult(method, str(torch_device))
        elif method == "normalize":
            result = filters.normalize(image, **params)
        else:
            result = filters.denoise(image, method, **params)
        if method != "nlm":
            self.last_result = DenoiseResult(method)
        progress.update(f"{method}: writing", 0.97)
        node = bridge.sitk_to_volume(result, self.scene, f"{input_node.GetName()} {method}", node=output_node)
        progress.update("done", 1.0)
        return node

    # --- classical segmentation ------------------------------------------------------------
    def threshold(self, input_node, lower: float | None = None, upper: float | None = None, output_node=None,
                  segment_name: str = "threshold", color=None, progress=None):
        """Segment ``lower <= value <= upper`` (input units, e.g. HU) into one named segment."""
        bridge.require_scalar_volume(input_node)
        progress = self._progress(progress)
        array, geometry = bridge.array_from_volume(input_node)
        labels = threshold.threshold(array, lower, upper)
        progress.update("threshold", 0.5)
        self.last_result = ThresholdResult(lower, upper, int(labels.sum()))
        segments = [SegmentInfo(1, segment_name, tuple(color) if color else SEGMENT_COLORS["threshold"])]
        node = self._segmentation(labels, geometry, segments, f"{input_node.GetName()} segmentation", output_node,
                                  input_node)
        progress.update("done", 1.0)
        return node

    def otsu(self, input_node, classes: int = 2, output_node=None, progress=None):
        """Otsu thresholding into ``classes - 1`` foreground segments ('otsu 1' is the brightest class
        above the first threshold, ...); thresholds are in ``self.last_result.thresholds``."""
        bridge.require_scalar_volume(input_node)
        progress = self._progress(progress)
        array, geometry = bridge.array_from_volume(input_node)
        labels, thresholds = threshold.otsu(array, classes)
        progress.update("otsu", 0.5)
        self.last_result = OtsuResult(list(thresholds))
        names = ["foreground"] if classes == 2 else [f"otsu class {c}" for c in range(1, classes)]
        segments = [SegmentInfo(c, names[c - 1], SEGMENT_COLORS["otsu"] if classes == 2 else None)
                    for c in range(1, classes)]
        node = self._segmentation(labels, geometry, segments, f"{input_node.GetName()} segmentation", output_node,
                                  input_node)
        progress.update("done", 1.0)
        return node

    def region_growing(self, input_node, seeds, method: str = "connected", lower: float | None = None,
                       upper: float | None = None, multiplier: float = 2.5, output_node=None,
                       segment_name: str = "region", progress=None):
        """Grow a region from seed points (a markups node or an (N, 3) RAS array, mm).

        ``connected``: between ``lower`` and ``upper`` (input units); ``confidence``: mean +-
        ``multiplier`` sd of the seed neighbourhood (lower/upper ignored).
        """
        bridge.require_scalar_volume(input_node)
        progress = self._progress(progress)
        points = bridge.points_from_markups(seeds) if hasattr(seeds, "IsA") else np.asarray(seeds, float)
        if len(points) == 0:
            raise ValueError("Region growing needs at least one seed point; place a point on the structure.")
        image = bridge.volume_to_sitk(input_node)
        array, geometry = bridge.array_from_volume(input_node)
        seeds_ijk = np.rint(geometry.point_to_index(np.atleast_2d(points))).astype(int)
        mask = threshold.region_growing(image, seeds_ijk, method, lower=lower, upper=upper, multiplier=multiplier)
        progress.update("region growing", 0.6)
        self.last_result = RegionGrowingResult(seeds_ijk.tolist(), int(mask.sum()))
        segments = [SegmentInfo(1, segment_name, SEGMENT_COLORS["region"])]
        node = self._segmentation(mask, geometry, segments, f"{input_node.GetName()} segmentation", output_node,
                                  input_node)
        progress.update("done", 1.0)
        return node

    # --- AI segmentation -------------------------------------------------------------------
    def segment_with_model(self, input_nodes, model_path, device: str = "auto", flip_tta: bool = False,
                           output_node=None, batch_size: int = 4, amp: bool = True, inferer: str = "bundle",
                           return_probabilities: bool = False, return_entropy: bool = False,
                           trust_bundle: bool = False, progress=None):
        """Segment with a MONAI bundle folder or a TorchScript file with a model card.

        ``input_nodes``: one volume node per model input (the first one sets the output grid).
        The segmentation node ('<first input> segmentation') gets the model's label names, colours
        and terminology, and the first input as reference geometry. ``flip_tta`` averages the 8 flipped
        predictions; with ``return_probabilities`` / ``return_entropy`` volume nodes '<input> probability
        <label>' and '<input> uncertainty' (entropy, nats) are created too and listed in
        ``self.last_result.extra_nodes`` (both model kinds; a bundle then runs through MedAI's sliding
        window with its own ROI/overlap/batch, as it also does when the memory guard finds its own
        inferer would not fit).

        Trust: a bundle's configs can run Python, so a bundle runs only when it is trusted (downloaded
        from the catalogue with a verified checksum, or trusted by the user with :meth:`trust_bundle`);
        otherwise ``ValueError`` names the bundle and how to trust it, and nothing changes. Pass
        ``trust_bundle=True`` only after the user confirmed (it records the trust, like ``--trust-bundle``).
        TorchScript models with a card run no config code and need no trust.
        """
        from MedAISegLib.inference.bundle import run_bundle
        from MedAISegLib.inference.torchscript_model import load_torchscript_with_card, run_model

        nodes, path, bundle, weights = self._model_inputs(input_nodes, model_path, trust_bundle)
        progress = self._progress(progress)
        torch_device = select_device(device)
        progress.update("reading inputs", 0.05)
        images = [bridge.volume_to_sitk(node) for node in nodes]
        sub = progress.sub(0.1, 0.9)

        def report(fraction):
            sub.update("inference", fraction)

        if bundle:
            result = run_bundle(path, images, device=torch_device, inferer=inferer, amp=amp, tta_flips=flip_tta,
                                return_probabilities=return_probabilities, return_entropy=return_entropy,
                                batch_size=batch_size, weights=weights, progress=report)
        else:
            network, card = load_torchscript_with_card(path, torch_device)
            result = run_model(network, card, images, device=torch_device, batch_size=batch_size, amp=amp,
                               tta_flips=flip_tta, return_probabilities=return_probabilities,
                               return_entropy=return_entropy, progress=report)
        progress.update("creating segmentation", 0.92)
        segments = [SegmentInfo(s.value, s.name, s.color, s.terminology) for s in result.segments]
        name = f"{nodes[0].GetName()} segmentation"
        node = self._segmentation(result.labels, result.geometry, segments, name, output_node, nodes[0])
        extra = self._model_extra_volumes(result, nodes[0].GetName())
        self.last_result = ModelSegmentationResult(
            dict(result.info), [n.GetName() for n in extra],
            {s.name: int((result.labels == s.value).sum()) for s in result.segments})
        progress.update("done", 1.0)
        return node

    @staticmethod
    def _model_inputs(input_nodes, model_path, trust_bundle: bool):
        """(input nodes, model path, is a bundle, bundle weights or None), refusing missing inputs or
        model and an untrusted bundle (its trust recorded first with ``trust_bundle``)."""
        from MedAISegLib.inference.bundle import is_bundle, load_bundle_weights
        from MedAISegLib.inference.bundle_trust import record_trust, require_trusted

        nodes = list(input_nodes) if isinstance(input_nodes, (list, tuple)) else [input_nodes]
        if not nodes:
            raise ValueError("Select at least one input volume for the model.")
        for node in nodes:
            bridge.require_scalar_volume(node)
        path = Path(model_path)
        if not path.exists():
            raise ValueError(f"Model {model_path} not found; give a MONAI bundle folder or a TorchScript file "
                             "(catalogue models must be downloaded first with download_model).")
        bundle = is_bundle(path)
        weights = None
        if bundle:
            weights = load_bundle_weights(path)  # corrupt or code-running weights are refused before trust is asked
            if trust_bundle:
                record_trust(path)
            require_trusted(path)
        return nodes, path, bundle, weights

    def _model_extra_volumes(self, result, input_name: str) -> list:
        """Probability volumes ('<input> probability <label>') and the entropy ('<input> uncertainty') when computed."""
        extra = []
        if result.probabilities is not None:
            for info in result.segments:
                extra.append(bridge.create_volume(self.scene, result.probabilities[info.value], result.geometry,
                                                  f"{input_name} probability {info.name}"))
        if result.entropy is not None:
            extra.append(bridge.create_volume(self.scene, result.entropy, result.geometry,
                                              f"{input_name} uncertainty"))
        return extra

    def bundle_trust_info(self, model_path) -> dict:
        """What the panel shows before running ``model_path``: ``path`` (resolved), ``is_bundle``,
        ``needs_trust`` (a bundle not trusted with its current configs), ``trusted``, ``origin``
        (``catalogue``/``local``; ``torchscript`` for card models), ``source`` (catalogue id and URL),
        ``digest`` (sha256 of the configs and Python files), ``changed`` (trusted before, edited since)."""
        from MedAISegLib.inference.bundle import is_bundle
        from MedAISegLib.inference.bundle_trust import trust_info

        path = Path(model_path)
        if not path.exists():
            raise ValueError(f"Model {model_path} not found; give a MONAI bundle folder or a TorchScript file.")
        if not is_bundle(path):
            return {"path": str(path.resolve()), "is_bundle": False, "needs_trust": False, "trusted": True,
                    "origin": "torchscript", "source": None, "digest": None, "changed": False, "trusted_at": None}
        info = trust_info(path)
        return dict(info, is_bundle=True, needs_trust=not info["trusted"])

    def trust_bundle(self, model_path) -> dict:
        """Record that the user trusts the bundle at ``model_path`` as it is now (call after the user
        confirmed the prompt showing :meth:`bundle_trust_info`); returns the new trust info."""
        from MedAISegLib.inference.bundle import is_bundle
        from MedAISegLib.inference.bundle_trust import record_trust

        if not is_bundle(model_path):
            raise ValueError(f"{model_path} is not a MONAI bundle folder (configs/inference.json); only bundles "
                             "need trust.")
        return dict(record_trust(model_path), is_bundle=True, needs_trust=False)

    def download_model(self, model_id: str, progress=None) -> Path:
        """Download a catalogue model into the per-user cache (checked); returns its folder or file."""
        from MedAISegLib.inference.model_catalog import download_model

        progress = self._progress(progress)

        def report(done, total):
            progress.update(f"downloading {model_id}", done / total if total else 0.0)

        return download_model(model_id, progress=report)

    def import_model(self, path, model_id: str | None = None) -> Path:
        """Copy a local model (bundle folder, TorchScript file with its card, or archive, unpacked
        safely) into the per-user cache; returns the path to pass to :meth:`segment_with_model`."""
        from MedAISegLib.inference.model_catalog import import_local_model

        return import_local_model(path, model_id)

    # --- post-processing -------------------------------------------------------------------
    def postprocess(self, segmentation_node, keep_largest: bool = False, fill_holes: bool = False,
                    min_island_mm3: float = 0.0, smoothing_mm: float = 0.0, segment_names=None, output_node=None,
                    progress=None):
        """Clean segments (all, or those named in ``segment_names``): remove islands below
        ``min_island_mm3``, keep the largest component, fill holes, smooth (Gaussian ``smoothing_mm``).

        Writes to ``output_node`` (pass the input itself to update it in place) or to a new node
        '<input> cleaned'."""
        bridge.require_segmentation(segmentation_node)
        progress = self._progress(progress)
        labels, geometry, infos = bridge.labelmap_from_segmentation(segmentation_node)
        only = None
        if segment_names is not None:
            only = [i.label for i in infos if i.name in set(segment_names)]
        progress.update("post-processing", 0.3)
        cleaned = postprocess.postprocess(labels, geometry.spacing, largest_component=keep_largest, holes=fill_holes,
                                          min_island_mm3=min_island_mm3, smoothing_mm=smoothing_mm, only=only)
        self.last_result = PostprocessResult({i.name: int((labels == i.label).sum()) for i in infos},
                                             {i.name: int((cleaned == i.label).sum()) for i in infos})
        progress.update("writing", 0.8)
        name = f"{segmentation_node.GetName()} cleaned"
        node = self._segmentation(cleaned, geometry, infos, name, output_node, None)
        progress.update("done", 1.0)
        return node

    # --- lesions ---------------------------------------------------------------------------
    def detect_lesions(self, source_node, intensity_node=None, segment_name: str | None = None,
                       probability_threshold: float = 0.5, min_volume_mm3: float = 0.0, markups_node=None,
                       table_node=None, progress=None):
        """Connected components of a segmentation (one segment by name, or all merged) or of a
        probability/label volume (>= ``probability_threshold``) -> (markups node with one point per
        lesion at its RAS centroid, table node with volume mm3, max diameter mm, centroid RAS mm,
        mean/max intensity of ``intensity_node``)."""
        progress = self._progress(progress)
        if source_node is not None and source_node.IsA("vtkMRMLSegmentationNode"):
            reference = bridge.volume_geometry(intensity_node) if intensity_node is not None else None
            labels, geometry, infos = bridge.labelmap_from_segmentation(
                source_node, reference, [segment_name] if segment_name else None)
            data = labels > 0
        else:
            bridge.require_scalar_volume(source_node, "lesion source (segmentation or probability volume)")
            data, geometry = bridge.array_from_volume(source_node)
            data = data.astype(np.float32)
            if intensity_node is not None and not bridge.volume_geometry(intensity_node).same_grid(geometry):
                data = bridge.resample_array(data, geometry, bridge.volume_geometry(intensity_node))
                geometry = bridge.volume_geometry(intensity_node)
        intensity = bridge.array_from_volume(intensity_node)[0] if intensity_node is not None else None
        progress.update("connected components", 0.4)
        lesions = detect_lesions(data, geometry, intensity, probability_threshold, min_volume_mm3)
        self.last_result = LesionResult(lesions)
        base = source_node.GetName()
        points = np.array([les["centroid_ras"] for les in lesions]).reshape(-1, 3)
        labels_text = [f"lesion {les['label']}" for les in lesions]
        columns = {
            "lesion": labels_text,
            "volume_mm3": [les["volume_mm3"] for les in lesions],
            "max_diameter_mm": [les["max_diameter_mm"] for les in lesions],
            "centroid_R_mm": [float(p[0]) for p in points], "centroid_A_mm": [float(p[1]) for p in points],
            "centroid_S_mm": [float(p[2]) for p in points],
        }
        if intensity is not None:
            columns["mean_intensity"] = [les["mean_intensity"] for les in lesions]
            columns["max_intensity"] = [les["max_intensity"] for les in lesions]
        markups = bridge.create_markups(self.scene, points, f"{base} lesions", labels_text, node=markups_node)
        table = bridge.create_table(self.scene, columns, f"{base} lesions", node=table_node,
                                    units={"volume_mm3": "mm3", "max_diameter_mm": "mm"})
        progress.update("done", 1.0)
        return markups, table

    # --- evaluation ------------------------------------------------------------------------
    def evaluate(self, reference_node, prediction_node, table_node=None, percentile: float = 95.0, progress=None):
        """Per reference segment: Dice, Jaccard, HD95, ASD (mm), sensitivity, specificity and volumes,
        into a table node '<prediction> evaluation'; segments are paired by name only (a label map's
        values are names '1', '2', ... unless named when loaded); the prediction is compared on the
        reference's grid in physical space. Grids apart in space are refused, a partial overlap warned.
        ``self.last_result.metrics`` holds ``{segment name: {metric: value}}``."""
        bridge.require_segmentation(reference_node, "reference segmentation")
        bridge.require_segmentation(prediction_node, "predicted segmentation")
        progress = self._progress(progress)
        ref, ref_geometry, ref_infos = bridge.labelmap_from_segmentation(reference_node)
        progress.update("reading", 0.2)
        pred, pred_geometry, pred_infos = bridge.labelmap_from_segmentation(prediction_node)
        require_grids_overlap(ref_geometry.with_shape(ref.shape), pred_geometry.with_shape(pred.shape),
                              reference_node.GetName(), prediction_node.GetName(),
                              "reference and predicted segmentations")
        progress.update("metrics", 0.4)
        metrics = evaluate_labelmaps(ref, ref_geometry, pred, pred_geometry,
                                     {i.label: i.name for i in ref_infos}, {i.label: i.name for i in pred_infos},
                                     percentile)
        names = list(metrics)
        predicted_names = {i.label: i.name for i in pred_infos}
        columns = {"segment": names,
                   "matched": [predicted_names.get(metrics[n]["prediction_label"], "") for n in names]}
        for metric in METRICS:
            columns[metric] = [float(metrics[n][metric]) for n in names]
        table = bridge.create_table(self.scene, columns, f"{prediction_node.GetName()} evaluation", node=table_node,
                                    units={"hd95_mm": "mm", "asd_mm": "mm", "volume_reference_mm3": "mm3",
                                           "volume_prediction_mm3": "mm3", "volume_difference_mm3": "mm3"})
        self.last_result = EvaluationResult(metrics)
        progress.update("done", 1.0)
        return table
