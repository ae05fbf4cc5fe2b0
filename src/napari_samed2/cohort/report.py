"""The files a cohort run leaves in its output folder, beside the per-volume ``cases/`` records:

* ``embed.csv``, ``segment.csv`` or ``evaluate.csv``: one row per volume, failures first with
  their error, then the volumes a reviewer should open first (segment: least confident;
  evaluate: lowest final Dice);
* ``labels/<name>.nii.gz`` (segment, written by each volume's task);
* ``evaluation/``: the evaluation harness's results.csv, summary.csv, summary.md and plot over
  every (volume, object, policy, step) of the cohort (evaluate).

Every file is written to a temporary name and renamed when complete (``io.replacing``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from napari_samed2.cohort.tasks import FAILED, CohortTask, VolumeResult
from napari_samed2.evaluation.report import EvaluationResults, write_report, write_rows
from napari_samed2.io._files import replacing

EVALUATION_FOLDER = "evaluation"


def csv_path(task: CohortTask) -> Path:
    return task.out / f"{task.kind}.csv"


def sort_results(results: Sequence[VolumeResult], kind: str) -> list[VolumeResult]:
    """Failed volumes first, then the worst: lowest minimum confidence (segment) or final
    Dice (evaluate); by name otherwise and within ties."""

    def worst_first(result: VolumeResult):
        row = result.row
        score = {"segment": "min_confidence", "evaluate": "final_dice"}.get(kind)
        value = getattr(row, score) if score else 0.0
        return (row.status != FAILED, math.inf if math.isnan(value) else value, row.name)

    return sorted(results, key=worst_first)


def write_cohort_report(task: CohortTask, results: Sequence[VolumeResult]) -> tuple[list[VolumeResult], list[Path]]:
    """The cohort CSV (and for evaluate the combined evaluation report); returns the results
    in the CSV's order and the files written."""
    ordered = sort_results(results, task.kind)
    path = csv_path(task)
    with replacing(path, overwrite=True) as partial:
        write_rows(partial, [r.row for r in ordered], task.row_type)
    written = [path]
    evaluation = evaluation_results(task, ordered)
    if evaluation is not None:
        folder = task.out / EVALUATION_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        written += write_report(evaluation, folder, overwrite=True)
    return ordered, written


def evaluation_results(task: CohortTask, results: Sequence[VolumeResult]) -> EvaluationResults | None:
    """Every step record of the cohort's evaluated volumes, by volume name, as the
    evaluation harness reports them (None when no volume was evaluated)."""
    if task.kind != "evaluate":
        return None
    finished = sorted((r for r in results if r.records), key=lambda r: r.row.name)
    if not finished:
        return None
    records = tuple(record for r in finished for record in r.records)
    notes = tuple(note for r in finished for note in r.notes)
    return EvaluationResults(records, task.protocol, finished[0].model, notes)
