"""Greedy beam-angle selection: add, one at a time, the candidate beam that lowers the optimised
objective most (each trial a short fluence optimisation on the candidates' dose-influence columns).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from MedAIPlanLib.optimisation.fluence import Objective, optimise_fluence


def select_beams_greedy(
    dij: sp.spmatrix,
    beam_of_bixel: np.ndarray,
    num_beams: int,
    voxels: dict,
    objectives: list[Objective],
    prescription_gy: float,
    target: str,
    fractions: int = 1,
    trial_iterations: int = 40,
    progress=None,
) -> tuple[list[int], list[float]]:
    """Indices of ``num_beams`` candidate beams chosen greedily, and the objective after each addition.

    ``dij`` holds the columns of all candidate beams, ``beam_of_bixel`` their beam index.
    """
    candidates = sorted(set(int(b) for b in np.unique(beam_of_bixel)))
    if num_beams < 1 or num_beams > len(candidates):
        raise ValueError(f"Cannot select {num_beams} beams from {len(candidates)} candidates.")
    dij = dij.tocsc()
    chosen: list[int] = []
    scores: list[float] = []
    total_trials = sum(len(candidates) - i for i in range(num_beams))
    done = 0
    for _ in range(num_beams):
        best, best_value = None, np.inf
        for c in candidates:
            if c in chosen:
                continue
            cols = np.flatnonzero(np.isin(beam_of_bixel, chosen + [c]))
            try:
                result = optimise_fluence(
                    dij[:, cols], voxels, objectives, prescription_gy, target, fractions, max_iter=trial_iterations
                )
                value = result.history[-1] if result.history else np.inf
            except ValueError:  # e.g. this beam alone misses the target
                value = np.inf
            if value < best_value:
                best, best_value = c, value
            done += 1
            if progress is not None:
                progress.update("beam-angle selection", done / total_trials)
        if best is None:
            raise ValueError("No candidate beam reaches the target; check the isocentre and angles.")
        chosen.append(best)
        scores.append(float(best_value))
    return chosen, scores
