"""Cohorts: ``medai batch`` runs a pipeline of ``medai`` steps over every case of a manifest on Dask distributed.

- :mod:`.manifest`: the cohort CSV (an ``id`` column, every other column an input; relative paths resolve
  against the manifest's folder).
- :mod:`.pipeline`: the pipeline YAML (``steps`` with ``name``, ``command``, ``args``, ``needs``), checked up
  front, and its placeholders ``{case.COLUMN}``, ``{STEP}``, ``{out}``.
- :mod:`.digests`: content digests of inputs and the key of each case-step (what makes re-runs skip work).
- :mod:`.steps`: what a worker does for one case: each step in-process, written atomically, marked done last.
- :mod:`.model_cache`: the worker-local cache of loaded models (steps with ``needs: [model]``).
- :mod:`.execution`: the Dask cluster (embedded ``LocalCluster`` or a scheduler address), submission, progress.
- :mod:`.table` and :mod:`.report`: the cohort table (CSV, Parquet) and the cohort report (PNG, PDF).
- :mod:`.contour_qa_summary`: ``contour-qa`` steps across the cohort (per structure: cases flagged
  dose-relevant, |delta Dmean| and |delta D95|, Dice), ``contour_qa_summary.csv``.
- ``pipelines/``: the shipped pipelines (``--pipeline NAME``), package data of the wheel.
- :mod:`.commands`: the ``medai batch`` subcommand.
- :mod:`.case_folder` and :mod:`.batch_job`: the panels' Batch section: a manifest built from a folder of
  cases, and ``medai batch`` in a worker process whose cohort table becomes a table node.
"""
