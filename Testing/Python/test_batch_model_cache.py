"""The worker-local model cache: a model is loaded once per worker for every case of a ``needs: [model]`` step.

The cases run through :func:`MedAICommonLib.cohort.steps.run_case` in this process, as a Dask worker runs
them, so the cache's own counters can be read; the model is a real TorchScript file with its card.
"""

from __future__ import annotations

import pytest
from batch_cohort import MODEL_STEPS, add_column, write_cohort, write_pipeline, write_threshold_model

from MedAICommonLib.cohort import model_cache
from MedAICommonLib.cohort.manifest import read_manifest
from MedAICommonLib.cohort.pipeline import load_pipeline
from MedAICommonLib.cohort.steps import run_case
from MedAISegLib.inference.model_checks import load_torchscript_file


@pytest.fixture
def model_cohort(tmp_path):
    """Three phantom cases and a manifest whose 'model' column names one TorchScript model."""
    manifest = write_cohort(tmp_path / "cohort", 3)
    model = write_threshold_model(tmp_path / "models")
    return add_column(manifest, "model", str(model)), model


def _run(manifest, steps, output) -> list[dict]:
    cohort = read_manifest(manifest)
    pipeline = load_pipeline(write_pipeline(output.parent / "p.yaml", steps), cohort.columns, cohort.cases[0].values)
    return [run_case(case, pipeline.steps, str(output)) for case in cohort.cases]


def test_a_model_step_loads_its_model_once_for_the_whole_cohort(model_cohort, tmp_path):
    manifest, model = model_cohort
    model_cache.clear_model_cache()
    results = _run(manifest, MODEL_STEPS, tmp_path / "results")
    assert [r["status"] for r in results] == ["done"] * 3, [r["error"] for r in results]
    assert model_cache.stats == {"loads": 1, "hits": 2}
    for result in results:  # the cached network segments every case as a freshly loaded one would
        assert result["steps"]["evaluate"]["metrics"]["mean_dice"] > 0.5

    write_threshold_model(model.parent, threshold=5000.0)  # the model file changes: a new digest, loaded again
    results = _run(manifest, MODEL_STEPS, tmp_path / "results")
    assert model_cache.stats["loads"] == 2
    assert [r["steps"]["denoise"]["status"] for r in results] == ["skipped"] * 3
    assert [r["steps"]["segment"]["status"] for r in results] == ["run"] * 3
    assert all(r["steps"]["segment"]["metrics"]["voxels"]["lesion"] == 0 for r in results)
    model_cache.clear_model_cache()


def test_without_needs_model_or_outside_a_batch_nothing_is_cached(model_cohort, tmp_path):
    manifest, model = model_cohort
    model_cache.clear_model_cache()
    steps = [dict(step) for step in MODEL_STEPS]
    steps[1].pop("needs")
    results = _run(manifest, steps, tmp_path / "results")
    assert [r["status"] for r in results] == ["done"] * 3
    assert model_cache.stats == {"loads": 0, "hits": 0}
    assert load_torchscript_file(model) is not load_torchscript_file(model)
    with model_cache.model_cache_enabled():
        assert load_torchscript_file(model) is load_torchscript_file(model)
