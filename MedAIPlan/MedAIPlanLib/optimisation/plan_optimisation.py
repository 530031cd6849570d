"""A whole plan's fluence optimisation on its dose-influence matrix: optional greedy beam selection,
the structures' voxels on the dose grid (overlaps to the best priority), the CT-grid objective blocks,
then :func:`fluence.optimise_fluence` on the chosen beams' bixels. Arrays in, arrays out (KJI masks,
LPS grids); the Logic turns the result into nodes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from MedAICommonLib.geometry import Geometry

from MedAIPlanLib.optimisation.beam_angles import select_beams_greedy
from MedAIPlanLib.dose.ct_grid import ct_factor, exclusive_ct_masks
from MedAIPlanLib.dose.dose_influence import DoseInfluence, resample_nearest
from MedAIPlanLib.optimisation.fluence import FluenceResult, Objective, exclusive_voxels, optimise_fluence


@dataclass
class OptimisedPlan:
    """``weights`` of all of the matrix's bixels (0 on beams not chosen), the ``chosen`` beam indices
    (sorted), the greedy selection's scores, the optimised bixel columns ``cols``, the optimiser's
    ``result`` and the ``objectives`` it used (those with voxels, and the target's)."""

    weights: np.ndarray
    chosen: list[int]
    selection_scores: list
    cols: np.ndarray
    result: FluenceResult
    objectives: list[Objective]


def optimise_plan(dij: DoseInfluence, n_beams: int, ct_geometry: Geometry, masks: dict[str, np.ndarray],
                  objectives: list[Objective], target: str, prescription_gy: float, fractions: int, *,
                  priorities: dict[str, int], ct_grid_masks: dict[str, np.ndarray] | None,
                  select_beams: int | None, max_iter: int, device, progress) -> OptimisedPlan:
    """Optimise the fluence of the plan's ``n_beams`` beams (``prescription_gy`` in Gy over ``fractions``).

    ``masks``: CT-grid KJI masks of all structures; ``ct_grid_masks``: those whose objectives are
    evaluated on the CT-grid dose (interpolated back) when the dose grid is coarser than the CT, None
    for all on the dose grid; ``select_beams`` = n chooses the n best beams greedily first.
    ``progress``: a :class:`Progress` whose 0.6-0.95 span this fills.
    """
    masks_d = {n: resample_nearest(m, ct_geometry, dij.geometry) for n, m in masks.items()}
    voxels = exclusive_voxels(masks_d, priorities)
    objectives = [o for o in objectives if len(voxels.get(o.structure, [])) > 0 or o.structure == target]
    chosen = list(range(n_beams))
    selection_scores = []
    if select_beams:
        chosen, selection_scores = select_beams_greedy(dij.matrix, dij.beam_of_bixel, int(select_beams), voxels,
                                                       objectives, prescription_gy, target, fractions,
                                                       progress=progress.sub(0.6, 0.75))
        chosen = sorted(chosen)
    cols = np.flatnonzero(np.isin(dij.beam_of_bixel, chosen))
    blocks = None
    if ct_grid_masks is not None and not dij.geometry.same_grid(ct_geometry.to_space("LPS")):
        # target and organs: objectives on the CT-grid dose that will be shown (interpolated back)
        blocks = {n: ct_factor(dij.geometry, ct_geometry, m)
                  for n, m in exclusive_ct_masks(ct_grid_masks, priorities).items() if m.any()}
    result = optimise_fluence(dij.matrix[:, cols], voxels, objectives, prescription_gy, target, fractions,
                              max_iter=max_iter, device=device, blocks=blocks, stall_iterations=20,
                              progress=progress.sub(0.75, 0.95))
    w = np.zeros(dij.num_bixels)
    w[cols] = result.weights
    return OptimisedPlan(w, chosen, selection_scores, cols, result, objectives)
