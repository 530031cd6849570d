"""Dose-aware contour QA: what a contour difference, or a model's uncertainty, does to the dose.

Two structure sets on one dose are compared structure by structure (matched by name): Dice, HD95 and the
surface Dice of Nikolov et al. (2018) side by side with the dose differences (candidate minus reference) of
Dmean, D95, D2, D0.03cc and Vx; structures whose dose difference crosses a threshold are flagged
*dose-relevant* and ranked first. With a model's probability maps, the DVH at several probability thresholds
gives a band of D95 / Dmean / D2 per structure.

* :mod:`.surface`: surface voxels, surface distances and the surface Dice (mm, anisotropic spacing).
* :mod:`.metrics`: per-structure geometric and dose comparison, relevance flags and ranking.
* :mod:`.bands`: DVH bands from probability maps, constraints.
* :mod:`.labels`: structure names of label maps (TotalSegmentator), name mapping between sets.
* :mod:`.report`: the CSV table and the PDF/PNG report.
* :mod:`.logic`: the Logic on MRML nodes; :mod:`.commands`: ``medai contour-qa``.
* :mod:`.panel_logic`: what MedAIPlan's Contour QA section runs (settings, flagged rows, the plot-table layout).
"""
