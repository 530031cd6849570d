"""``medai batch MANIFEST --pipeline PIPELINE --output DIR``: one pipeline over a cohort, on Dask distributed.

Exit code 0 when every case is done, 3 when some failed (listed in the report and the table), 1 on bad
input (manifest, pipeline, scheduler), 130 on Ctrl-C (a later run resumes where this one stopped).
"""

from __future__ import annotations

from pathlib import Path

from .manifest import read_manifest
from .pipeline import load_pipeline

EXIT_SOME_FAILED = 3


def register(subparsers, add_common_options) -> None:
    """Add ``batch``."""
    p = subparsers.add_parser("batch", help="run a pipeline of medai steps over a cohort (Dask)")
    p.add_argument("manifest", help="cohort CSV: an 'id' column and one column per input (paths relative to it)")
    p.add_argument(
        "--pipeline",
        required=True,
        metavar="FILE|NAME",
        help="pipeline YAML (steps with name, command, args, needs), or a shipped pipeline's name "
        "(segmentation-cohort, planning-cohort, contour-qa-cohort)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="results folder: DIR/<case>/<step>/...")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        help="worker processes of the embedded LocalCluster (default: one per GPU, else a quarter of the cores)",
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler, e.g. tcp://host:8786")
    add_common_options(p)
    p.set_defaults(func=cmd_batch)


def _summarise(results: list[dict], report) -> None:
    from .contour_qa_summary import batch_metrics

    steps = [s for r in results for s in r.get("steps", {}).values()]
    report.metrics.update(
        {
            "cases_total": report.metrics["cases_total"],
            "cases_done": sum(r["status"] == "done" for r in results),
            "cases_failed": sum(r["status"] != "done" for r in results),
            "steps_run": sum(s["status"] == "run" for s in steps),
            "steps_skipped": sum(s["status"] == "skipped" for s in steps),
            "failed": {r["id"]: r.get("error") for r in results if r["status"] != "done"},
        }
    )
    report.metrics.update(batch_metrics(results))  # contour-qa steps: flagged structures across the cohort


def _write_outputs(results: list[dict], output: Path, pipeline_name: str, report) -> None:
    from .report import write_cohort_report
    from .table import cohort_rows, write_cohort_table

    with report.timed("table"):
        report.outputs.update(write_cohort_table(results, output))
    with report.timed("report"):
        report.outputs.update(write_cohort_report(results, cohort_rows(results), output, pipeline_name))


def _remove_leftovers(output: Path, cases) -> None:
    """Temporary step folders of attempts that never finished (a killed worker's); no task runs any more."""
    import shutil

    for case in cases:
        for folder in (output / case.id).glob(".*.tmp-*"):
            shutil.rmtree(folder, ignore_errors=True)


def _counting(results: list[dict], line, progress):
    """The callback of each finished case: keep its result, redraw the terminal line and report
    ``"N done, M failed of T cases"`` to ``progress`` (the panel's worker reads it as JSON lines)."""

    def on_result(result: dict) -> None:
        results.append(result)
        line.update(result["status"])
        if progress is not None:
            finished = line.done + line.failed
            progress.update(f"{line.done} done, {line.failed} failed of {line.total} cases", finished / line.total)

    return on_result


def cmd_batch(args, report) -> int:
    """Check the manifest and pipeline, run every case on Dask, write the table and the report."""
    from .execution import ProgressLine, dask_client, run_cases

    manifest = read_manifest(args.manifest)
    pipeline = load_pipeline(args.pipeline, manifest.columns, manifest.cases[0].values)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    report.inputs.update({"manifest": str(manifest.path), "pipeline": str(pipeline.path)})
    report.parameters.update(
        {
            "steps": [{"name": s.name, "command": s.command, "args": s.args, "needs": s.needs} for s in pipeline.steps],
            "workers": args.workers,
            "scheduler": args.scheduler,
        }
    )
    report.metrics["cases_total"] = len(manifest.cases)
    results: list[dict] = []
    try:
        with dask_client(args.workers, args.scheduler) as client:
            report.parameters["dashboard"] = client.dashboard_link
            report.parameters["workers_started"] = len(client.scheduler_info().get("workers", {}))
            progress = ProgressLine(len(manifest.cases), client.dashboard_link)
            with report.timed("run"):
                results = run_cases(
                    client,
                    manifest.cases,
                    pipeline.steps,
                    str(output),
                    on_result=_counting(results, progress, getattr(args, "progress", None)),
                )
        _remove_leftovers(output, manifest.cases)
    finally:
        _summarise(results, report)
        if results:
            _write_outputs(results, output, pipeline.path.stem, report)
    return EXIT_SOME_FAILED if report.metrics["cases_failed"] else 0
