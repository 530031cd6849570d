"""MedAIPlan Logic: photon dose (SVD pencil beam) and fluence optimisation on MRML nodes.

Inputs are a CT volume node (HU) and a segmentation node (target and organs); outputs are dose
volume nodes in Gy on the CT geometry, marked as SlicerRT dose volumes (``DicomRtImport.DoseVolume``,
dose unit attributes, ``Dose_ColorTable``). Nodes are converted only through
:mod:`MedAICommonLib.bridge`; outputs are created after the computation succeeded; an existing
``output_dose_node`` is updated instead. Bad input raises ``ValueError`` saying what to do.
After each dose or plan run ``self.last_result`` (:class:`~MedAIPlanLib.plan_settings.DoseResult` or
:class:`~MedAIPlanLib.plan_settings.PlanResult`) holds beams, weights, timings and per-structure dose figures;
the dose node records the plan's settings (:class:`~MedAIPlanLib.plan_settings.PlanSettings`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from MedAICommonLib import bridge
from MedAICommonLib.bridge.segmentations import SegmentInfo
from MedAICommonLib.devices import select_device
from MedAICommonLib.progress import Progress
from MedAICommonLib.runtime import get_scene

from MedAIPlanLib.evaluation import dose_volume
from MedAIPlanLib.dose.beams import make_beams
from MedAIPlanLib.dose.bixel_width import check_bixel_width
from MedAIPlanLib.dose.dose_influence import compute_dij, dose_to_ct_grid, make_dose_grid, resample_nearest
from MedAIPlanLib.evaluation.dose_metrics import mask_metrics
from MedAIPlanLib.optimisation.fluence import Objective
from MedAIPlanLib.dose.hlut import hu_to_density, load_hlut
from MedAIPlanLib.dose.matrad_io import load_matrad_patient, load_photon_machine
from MedAIPlanLib.dose.memory_estimate import (available_memory_bytes, check_dose_grid_size, estimate_plan_memory as estimate_memory,
                              explains_memory_errors, memory_limit_bytes, refusal_message)
from MedAIPlanLib.optimisation.plan_optimisation import optimise_plan
from MedAIPlanLib.plan_settings import TG119_ANGLES, DoseResult, PlanResult, PlanSettings

BODY_NAMES = ("body", "external", "skin", "outline", "patient")


def default_machine_path() -> Path:
    """photons_Generic.mat: $MEDAI_PHOTON_MACHINE, the per-user cache (``medai download-base-data``,
    SHA-256 checked), the copy shipped in the module's Resources, or the shared data folder."""
    from MedAIPlanLib.dose.base_data import cached_machine_path

    candidates = []
    if os.environ.get("MEDAI_PHOTON_MACHINE"):
        candidates.append(Path(os.environ["MEDAI_PHOTON_MACHINE"]))
    here = Path(__file__).resolve().parents[1]
    candidates.append(cached_machine_path())
    candidates.append(here / "Resources" / "photons_Generic.mat")
    shared = os.environ.get("MEDAI_SHARED_DATA")
    for root in ([Path(shared)] if shared else []) + [here.parents[1] / "shared" / "data", here.parents[0] / "shared" / "data"]:
        candidates.append(root / "rt" / "matRad" / "photons_Generic.mat")
    for c in candidates:
        if c.is_file():
            return c
    raise ValueError("Photon base data photons_Generic.mat (matRad) not found; run `medai download-base-data` "
                     "or set MEDAI_PHOTON_MACHINE to its path.")


def default_objectives(names: list[str], target: str, prescription_gy: float) -> list[Objective]:
    """Target: squared deviation from the prescription (penalty 1000); body: overdose above 60 % Rx
    (100); other organs: overdose above 50 % Rx (300)."""
    out = [Objective(target, "squared_deviation", prescription_gy, 1000.0)]
    for n in names:
        if n == target:
            continue
        if n.lower() in BODY_NAMES:
            out.append(Objective(n, "squared_overdose", 0.6 * prescription_gy, 100.0))
        else:
            out.append(Objective(n, "squared_overdose", 0.5 * prescription_gy, 300.0))
    return out


class MedAIPlanLogic:
    """Headless Logic of MedAIPlan bound to ``scene`` (default :func:`MedAICommonLib.runtime.get_scene`)."""

    def __init__(self, scene=None, machine_path=None) -> None:
        self.scene = scene if scene is not None else get_scene()
        self._machine_path = machine_path
        self._machine = None
        self.last_result: DoseResult = DoseResult()
        self.matrad_structures: dict = {}

    # --- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _progress(progress) -> Progress:
        return progress if isinstance(progress, Progress) else Progress(progress)

    @property
    def machine(self):
        """The photon base data (loaded once)."""
        if self._machine is None:
            self._machine = load_photon_machine(self._machine_path or default_machine_path())
        return self._machine

    def _inputs(self, ct_node, segmentation_node, target, hlut_path=None):
        bridge.require_scalar_volume(ct_node, "CT volume")
        bridge.require_segmentation(segmentation_node, "structure set")
        hu, geometry = bridge.array_from_volume(ct_node)
        names = [i.name for i in bridge.segment_infos(segmentation_node)]
        if not target:
            raise ValueError("Choose the target segment (e.g. --target PTV).")
        match = [n for n in names if n.lower() == str(target).lower()]
        if not match:
            raise ValueError(f"Target segment {target!r} not found; segments are: {', '.join(names)}.")
        masks = {n: bridge.segment_mask(segmentation_node, n, reference=geometry)[0].astype(bool) for n in names}
        if not masks[match[0]].any():
            raise ValueError(f"The target segment {match[0]!r} is empty.")
        table = load_hlut(hlut_path) if hlut_path else None
        density = hu_to_density(hu, table)
        return hu, geometry, density, masks, match[0]

    @staticmethod
    def _priorities(masks: dict, target: str, given: dict | None = None) -> dict:
        if given:
            return {n: given.get(n, 2) for n in masks}
        return {n: 1 if n == target else (3 if n.lower() in BODY_NAMES else 2) for n in masks}

    def _body_mask(self, masks, density):
        """Voxels that get dose and count for ray tracing (matRad: the union of the structures).

        Without a body/external segment the patient is taken as density > 0.05 plus all segments, so a
        target-and-organs-only segmentation still attenuates through the whole patient."""
        has_body = any(n.lower() in BODY_NAMES for n in masks)
        body = np.zeros(density.shape, bool) if has_body else density > 0.05
        for m in masks.values():
            body |= m
        return body

    def _beams(self, masks, target, geometry, gantry_angles, couch_angles, bixel_width_mm, isocenter_lps,
               margin_mm):
        if gantry_angles is None or len(list(gantry_angles)) == 0:
            raise ValueError("Give the gantry angles (degrees), e.g. 0,51,102,153,204,255,306.")
        return make_beams(masks[target], geometry, list(gantry_angles), couch_angles, bixel_width_mm,
                          isocenter_lps, margin_mm)

    def _output(self, dose_ct, geometry, name, node, settings: PlanSettings):
        node = bridge.create_volume(self.scene, dose_ct.astype(np.float32, copy=False), geometry, name, node=node)
        dose_volume.mark_as_dose_volume(node)
        settings.write_to_node(node)
        return node

    def _metrics(self, dose_ct, masks, geometry):
        """Per-structure dose statistics as ``medai dvh`` gives them for the saved dose and segmentation
        (the float32 dose as stored, the masks on the CT grid, :func:`dose_metrics.mask_metrics`)."""
        stored = dose_ct.astype(np.float32, copy=False)
        return {n: mask_metrics(stored, geometry, m, geometry) for n, m in masks.items()}

    # --- memory -----------------------------------------------------------------------------
    def _memory(self, geometry, masks, density, beams, dose_grid_mm, limit=None):
        dgeo = make_dose_grid(geometry.to_space("LPS"), dose_grid_mm)
        check_dose_grid_size(dgeo.shape_kji, dose_grid_mm, limit)    # before resampling onto it
        body = self._body_mask(masks, density)
        body_d = resample_nearest(body, geometry.to_space("LPS"), dgeo)
        inner = np.zeros(body.shape, bool)
        for n, m in masks.items():
            if n.lower() not in BODY_NAMES:
                inner |= m
        frac = 1.0 if any(n.lower() in BODY_NAMES for n in masks) else max(0.05, inner.sum() / max(1, body.sum()))
        return estimate_memory(geometry.to_space("LPS"), dgeo, body_d, beams, len(masks), objective_fraction=frac)

    def _check_memory(self, geometry, masks, density, beams, dose_grid_mm, bixel_width_mm, memory_limit_gb,
                      auto_dose_grid, progress):
        """Dose grid to use (the requested one, or a coarser one when allowed) so that the plan fits; a bixel
        width the engine cannot represent (:mod:`bixel_width`) is refused, with the estimate beside the reason."""
        width_refusal = check_bixel_width(bixel_width_mm, geometry.spacing, self.machine.penumbra_fwhm, dose_grid_mm)
        limit = memory_limit_bytes(memory_limit_gb) or available_memory_bytes()
        if not limit and not width_refusal:
            return dose_grid_mm, None
        progress.update("estimating memory", 0.04)
        grid, est = dose_grid_mm, self._memory(geometry, masks, density, beams, dose_grid_mm, limit)
        requested, self.memory_estimate = est, est.as_dict()
        while not width_refusal and est.total > limit and auto_dose_grid:
            current = grid if grid is not None else max(geometry.spacing)
            if current >= 10.0:
                break
            grid = min(10.0, round(current * 1.5, 2))
            est = self._memory(geometry, masks, density, beams, grid)
        if width_refusal or est.total > limit:
            raise ValueError(refusal_message(requested, limit, bixel_width_mm, dose_grid_mm, len(beams),
                                             bool(memory_limit_gb), reason=width_refusal))
        self.memory_estimate = est.as_dict()
        return grid, self.memory_estimate

    def estimate_plan_memory(self, ct_node, segmentation_node, target: str, gantry_angles=TG119_ANGLES,
                             couch_angles=None, bixel_width_mm: float = 5.0, dose_grid_mm=5.0, isocenter_lps=None,
                             margin_mm: float = 0.0, hlut_path=None) -> dict:
        """Estimated peak memory (GiB, per part; see :mod:`memory_estimate`) of a plan with these settings,
        plus ``available_GiB`` (what the system can give now). Creates no nodes."""
        hu, geometry, density, masks, target = self._inputs(ct_node, segmentation_node, target, hlut_path)
        beams = self._beams(masks, target, geometry, gantry_angles, couch_angles, bixel_width_mm, isocenter_lps,
                            margin_mm)
        avail = available_memory_bytes()
        out = self._memory(geometry, masks, density, beams, dose_grid_mm, avail).as_dict()
        out["available_GiB"] = round(avail / 1024 ** 3, 3) if avail else None
        return out

    # --- matRad files ----------------------------------------------------------------------
    def load_matrad(self, path, name: str | None = None, progress=None):
        """Load a matRad/pyRadPlan patient ``.mat`` as (CT node in HU, segmentation node)."""
        progress = self._progress(progress)
        progress.update("reading matRad file", 0.1)
        patient = load_matrad_patient(path)
        base = name or Path(path).stem
        geometry = patient.geometry.to_space("RAS")
        labels = np.zeros(patient.hu.shape, np.uint16)
        segments = []
        # paint low-priority (large) structures first so that targets and organs stay on top
        order = sorted(range(len(patient.structures)), key=lambda i: -patient.structures[i].priority)
        overlap = False
        for i in order:
            s = patient.structures[i]
            overlap |= bool(np.any(labels[s.mask] > 0))
            labels[s.mask] = i + 1
            segments.append(SegmentInfo(i + 1, s.name))
        ct = bridge.create_volume(self.scene, np.rint(patient.hu).astype(np.int16), geometry, f"{base} CT")
        seg = bridge.create_segmentation(self.scene, labels, geometry, sorted(segments, key=lambda s: s.label),
                                         f"{base} structures", reference_volume=ct)
        if overlap:  # a label map cannot hold overlaps: set each segment's own mask
            self._set_exact_masks(seg, patient, geometry, ct)
        self.matrad_structures = {s.name: s for s in patient.structures}
        progress.update("done", 1.0)
        return ct, seg

    def _set_exact_masks(self, seg, patient, geometry, ct):
        for s in patient.structures:
            single = bridge.create_segmentation(self.scene, s.mask.astype(np.uint16), geometry,
                                                [SegmentInfo(1, s.name)], "__medai_tmp__", reference_volume=ct)
            try:
                segmentation = seg.GetSegmentation()
                seg_id = segmentation.GetSegmentIdBySegmentName(s.name)
                src = single.GetSegmentation()
                segmentation.RemoveSegment(seg_id)
                segmentation.CopySegmentFromSegmentation(src, src.GetNthSegmentID(0))
            finally:
                bridge.remove_nodes(self.scene, [single])

    # --- dose -------------------------------------------------------------------------------
    @explains_memory_errors
    def compute_dose(self, ct_node, segmentation_node, target: str, gantry_angles=TG119_ANGLES, couch_angles=None,
                     bixel_width_mm: float = 5.0, weights=None, beam_weights=None, prescription_gy=None,
                     fractions: int = 1, dose_grid_mm=None, isocenter_lps=None, margin_mm: float = 0.0,
                     per_beam: bool = False, output_dose_node=None, device: str = "auto", hlut_path=None,
                     memory_limit_gb: float | None = None, auto_dose_grid: bool = False, progress=None):
        """Forward dose (Gy, CT grid) of beams with given bixel ``weights`` or per-beam open-field weights.

        Without ``weights``, every bixel of beam b gets ``beam_weights[b]`` (default 1); when a
        ``prescription_gy`` is given the plan is scaled so the target's mean dose equals it.
        Otherwise dose = ``fractions`` x dij @ weights (matRad's units: Gy per unit weight).
        """
        progress = self._progress(progress)
        if prescription_gy is not None and prescription_gy <= 0:
            raise ValueError(f"The prescription must be a positive dose in Gy, got {prescription_gy}.")
        if fractions < 1:
            raise ValueError("The number of fractions must be at least 1.")
        progress.update("reading inputs", 0.02)
        hu, geometry, density, masks, target = self._inputs(ct_node, segmentation_node, target, hlut_path)
        beams = self._beams(masks, target, geometry, gantry_angles, couch_angles, bixel_width_mm, isocenter_lps,
                            margin_mm)
        dose_grid_mm, memory = self._check_memory(geometry, masks, density, beams, dose_grid_mm, bixel_width_mm,
                                                  memory_limit_gb, auto_dose_grid, progress)
        dev = select_device(device)
        dij = compute_dij(density, geometry, beams, self.machine, voxel_mask=self._body_mask(masks, density),
                          dose_resolution_mm=dose_grid_mm, device=dev, progress=progress.sub(0.05, 0.85))
        if weights is not None:
            w = np.asarray(weights, float).ravel()
            if w.size != dij.num_bixels:
                raise ValueError(f"The plan has {dij.num_bixels} bixels but {w.size} weights were given.")
            if np.any(w < 0):
                raise ValueError("Bixel weights must be non-negative.")
        else:
            bw = np.ones(len(beams)) if beam_weights is None else np.asarray(beam_weights, float)
            if bw.size != len(beams):
                raise ValueError(f"Give one beam weight per beam ({len(beams)}), got {bw.size}.")
            w = bw[dij.beam_of_bixel]
        dose_d = dij.dose(w) * fractions
        if prescription_gy is not None:
            tmask = resample_nearest(masks[target], geometry, dij.geometry)
            mean_t = float(dose_d[tmask].mean()) if tmask.any() else 0.0
            if mean_t <= 0:
                raise ValueError("The beams give no dose to the target; check angles and isocentre.")
            w = w * prescription_gy / mean_t
            dose_d = dose_d * prescription_gy / mean_t
        progress.update("interpolating to the CT grid", 0.9)
        dose_ct = dose_to_ct_grid(dose_d, dij.geometry, geometry)
        beam_doses = [dose_to_ct_grid(dij.beam_dose(w, b) * fractions, dij.geometry, geometry)
                      for b in range(len(beams))] if per_beam else []
        settings = self._settings(beams, target, prescription_gy, fractions, bixel_width_mm, dose_grid_mm)
        node = self._output(dose_ct, geometry, f"{ct_node.GetName()} dose", output_dose_node, settings)
        beam_nodes = [self._output(d, geometry, f"{ct_node.GetName()} dose beam {b.gantry_deg:g}", None, settings)
                      for d, b in zip(beam_doses, beams)]
        self.last_result = DoseResult(
            beams=self._beam_info(beams), num_bixels=dij.num_bixels, weights=w, device=str(dev), timings=dij.timings,
            dij_nnz=int(dij.matrix.nnz), metrics=self._metrics(dose_ct, masks, geometry), beam_nodes=beam_nodes,
            dose_grid=list(dij.geometry.spacing), memory_estimate=memory)
        progress.update("done", 1.0)
        return node

    @staticmethod
    def _beam_info(beams):
        return [{"gantry_deg": b.gantry_deg, "couch_deg": b.couch_deg, "bixels": b.num_bixels,
                 "isocenter_lps_mm": [round(float(v), 2) for v in b.isocenter]} for b in beams]

    @staticmethod
    def _settings(beams, target, prescription, fractions, bixel_width, dose_grid) -> PlanSettings:
        """The settings the dose node records: the beams as built (angles, isocentre) and the plan's values."""
        return PlanSettings(target=target, prescription_gy=None if prescription is None else float(prescription),
                            fractions=int(fractions), gantry_angles=tuple(b.gantry_deg for b in beams),
                            couch_angles=tuple(b.couch_deg for b in beams), bixel_width_mm=float(bixel_width),
                            dose_grid_mm=None if dose_grid is None else float(dose_grid),
                            isocenter_lps=tuple(float(v) for v in beams[0].isocenter))

    @staticmethod
    def _check_prescription(prescription_gy, fractions) -> None:
        if prescription_gy is None or prescription_gy <= 0:
            raise ValueError(f"The prescription must be a positive dose in Gy, got {prescription_gy}.")
        if fractions < 1:
            raise ValueError("The number of fractions must be at least 1.")

    @staticmethod
    def _plan_objectives(objectives, masks, target, prescription_gy) -> list[Objective]:
        """The given objectives (default: :func:`default_objectives`), each naming a segment of ``masks``."""
        if objectives is None:
            objectives = default_objectives(list(masks), target, prescription_gy)
        unknown = [o.structure for o in objectives if o.structure not in masks]
        if unknown:
            raise ValueError(f"Objectives name unknown segments: {', '.join(unknown)}.")
        return objectives

    # --- plan -------------------------------------------------------------------------------
    @explains_memory_errors
    def plan(self, ct_node, segmentation_node, target: str, prescription_gy: float, fractions: int = 1,
             gantry_angles=TG119_ANGLES, couch_angles=None, bixel_width_mm: float = 5.0, dose_grid_mm=3.0,
             objectives: list[Objective] | None = None, select_beams: int | None = None, isocenter_lps=None,
             margin_mm: float = 0.0, max_iter: int = 150, per_beam: bool = False, output_dose_node=None,
             device: str = "auto", hlut_path=None, priorities: dict | None = None, ct_grid_objectives: bool = True,
             memory_limit_gb: float | None = None, auto_dose_grid: bool = False, progress=None):
        """Beams, dose-influence matrix, fluence optimisation; returns the plan's dose node (Gy, CT grid).

        With ``select_beams`` = n, the n best of ``gantry_angles`` are chosen greedily first. The
        dose-influence matrix uses matRad's lateral dij sampling (unbiased, about half the entries).
        Default objectives: :func:`default_objectives`. With ``ct_grid_objectives`` (and a dose grid
        coarser than the CT) the objectives of the target and organs are evaluated on their CT voxels
        through the trilinear interpolation back (:mod:`ct_grid`), the body's on the dose grid.
        Before computing, the memory is estimated (:meth:`estimate_plan_memory`); above
        ``memory_limit_gb`` (default: the memory available now) the run is refused with a ValueError,
        or with ``auto_dose_grid`` the dose grid is coarsened (x1.5 steps, up to 10 mm) until it fits.
        """
        progress = self._progress(progress)
        self._check_prescription(prescription_gy, fractions)
        progress.update("reading inputs", 0.02)
        hu, geometry, density, masks, target = self._inputs(ct_node, segmentation_node, target, hlut_path)
        objectives = self._plan_objectives(objectives, masks, target, prescription_gy)
        beams = self._beams(masks, target, geometry, gantry_angles, couch_angles, bixel_width_mm, isocenter_lps,
                            margin_mm)
        dose_grid_mm, memory = self._check_memory(geometry, masks, density, beams, dose_grid_mm, bixel_width_mm,
                                                  memory_limit_gb, auto_dose_grid, progress)
        dev = select_device(device)
        dij = compute_dij(density, geometry, beams, self.machine, voxel_mask=self._body_mask(masks, density),
                          dose_resolution_mm=dose_grid_mm, dij_sampling=True, device=dev,
                          progress=progress.sub(0.05, 0.6))
        used = {o.structure for o in objectives}
        inner = {n: m for n, m in masks.items() if n.lower() not in BODY_NAMES and n in used}
        opt = optimise_plan(dij, len(beams), geometry, masks, objectives, target, prescription_gy, fractions,
                            priorities=self._priorities(masks, target, priorities),
                            ct_grid_masks=inner if ct_grid_objectives else None, select_beams=select_beams,
                            max_iter=max_iter, device=dev, progress=progress)
        w, chosen, cols, result, objectives = opt.weights, opt.chosen, opt.cols, opt.result, opt.objectives
        dose_d = dij.dose(w) * fractions
        dose_ct = dose_to_ct_grid(dose_d, dij.geometry, geometry)
        kept = [beams[b] for b in chosen]
        beam_doses = [dose_to_ct_grid(dij.beam_dose(w, b) * fractions, dij.geometry, geometry) for b in chosen] \
            if per_beam else []
        settings = self._settings(kept, target, prescription_gy, fractions, bixel_width_mm, dose_grid_mm)
        node = self._output(dose_ct, geometry, f"{ct_node.GetName()} dose", output_dose_node, settings)
        beam_nodes = [self._output(d, geometry, f"{ct_node.GetName()} dose beam {b.gantry_deg:g}", None, settings)
                      for d, b in zip(beam_doses, kept)]
        self.last_result = PlanResult(
            beams=self._beam_info(kept), candidate_angles=[b.gantry_deg for b in beams],
            selection_objective=opt.selection_scores, num_bixels=int(len(cols)), weights=w[cols], device=str(dev),
            timings={**dij.timings, "optimisation_s": result.seconds}, iterations=result.iterations,
            objective=result.history[-1] if result.history else None,
            objectives=[o.__dict__ for o in objectives if o.structure in used], dij_nnz=int(dij.matrix.nnz),
            metrics=self._metrics(dose_ct, masks, geometry), beam_nodes=beam_nodes,
            dose_grid=list(dij.geometry.spacing), memory_estimate=memory)
        progress.update("done", 1.0)
        return node
