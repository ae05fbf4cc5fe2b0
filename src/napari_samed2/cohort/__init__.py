"""Cohorts: precompute embeddings, segment from saved prompts and evaluate many volumes, in
this process, on a local Dask cluster or on an existing one. Qt-free and napari-free.

``embed_cohort``, ``segment_cohort`` and ``evaluate_cohort`` are the three commands of
``python -m napari_samed2.cohort``; ``read_cohort`` lists a cohort from a folder or a CSV;
``process_volume`` is the work on one volume, the same in-process and on a worker;
``read_prompts`` / ``write_prompts`` / ``export_prompts`` handle prompt files. See
docs/cohort.md.
"""

from napari_samed2.cohort.api import CohortReport, default_workers, embed_cohort, evaluate_cohort, segment_cohort
from napari_samed2.cohort.cohort import Cohort, CohortVolume, read_cohort
from napari_samed2.cohort.prompts import VolumePrompts, export_prompts, read_prompts, write_prompts
from napari_samed2.cohort.runner import CohortProgress, run_cohort
from napari_samed2.cohort.tasks import (
    CohortTask,
    EmbedRow,
    EvaluateRow,
    ModelRef,
    SegmentRow,
    VolumeResult,
    process_volume,
)

__all__ = [
    "Cohort",
    "CohortProgress",
    "CohortReport",
    "CohortTask",
    "CohortVolume",
    "EmbedRow",
    "EvaluateRow",
    "ModelRef",
    "SegmentRow",
    "VolumePrompts",
    "VolumeResult",
    "default_workers",
    "embed_cohort",
    "evaluate_cohort",
    "export_prompts",
    "process_volume",
    "read_cohort",
    "read_prompts",
    "run_cohort",
    "segment_cohort",
    "write_prompts",
]
