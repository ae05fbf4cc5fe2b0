"""The three cohort commands as Python calls: :func:`embed_cohort`, :func:`segment_cohort`
and :func:`evaluate_cohort` (``python -m napari_samed2.cohort`` is a thin layer over them,
with the same argument names).

Every setting is checked before a worker starts: a misspelt model, policy or output folder
fails at once with a message, not once per volume on every worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from napari_samed2.cohort.cohort import Cohort, read_cohort
from napari_samed2.cohort.report import evaluation_results, write_cohort_report
from napari_samed2.cohort.runner import CohortProgress, run_cohort
from napari_samed2.cohort.tasks import DONE, FAILED, KEPT, CohortTask, ModelRef, VolumeResult
from napari_samed2.engine.embedding_cache import default_cache_dir
from napari_samed2.errors import CheckpointError, CohortError, VolumeError
from napari_samed2.evaluation.protocol import POLICIES, EvalProtocol
from napari_samed2.evaluation.report import EvaluationResults
from napari_samed2.io._files import check_writable
from napari_samed2.io.intensity import IntensityWindow, as_window

ProgressCallback = Callable[[CohortProgress], None]


@dataclass(frozen=True)
class CohortReport:
    """What a cohort command returns: every volume's result in the CSV's order (failures
    first, then the worst), the files written, and for ``evaluate`` the combined results."""

    kind: str
    results: tuple[VolumeResult, ...]
    files: tuple[Path, ...]
    evaluation: EvaluationResults | None = None

    @property
    def rows(self) -> list:
        return [r.row for r in self.results]

    def count(self, status: str) -> int:
        return sum(r.row.status == status for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.row.name for r in self.results if r.row.status == FAILED]

    def describe(self) -> str:
        return (
            f"{len(self.results)} volumes: {self.count(DONE)} done, {self.count(KEPT)} kept from an earlier run, "
            f"{self.count(FAILED)} failed"
        )


def embed_cohort(
    cohort: Cohort | str | os.PathLike,
    model: str | os.PathLike,
    *,
    out: str | os.PathLike,
    cache: str | os.PathLike | None = None,
    axis: int = 0,
    window: str | IntensityWindow | Sequence[float] | None = None,
    image_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    redo: bool = False,
    progress: ProgressCallback | None = None,
) -> CohortReport:
    """Encode every slice of every volume into the persistent embedding cache ``cache``
    (default: :func:`~napari_samed2.engine.embedding_cache.default_cache_dir`, where
    sessions look), so that opening a volume later runs no image encoder. Writes
    ``out/embed.csv``. Volumes already embedded with the same model are kept. ``window``: the
    intensity window the slices are read through (see :func:`~napari_samed2.io.as_window`;
    default: each volume's percentiles); ``segment_cohort`` finds the embeddings only when
    given the same one."""
    cache_dir = check_writable(Path(cache) if cache is not None else default_cache_dir())
    task = _task("embed", model, out, cache_dir, axis, image_size, device, dtype, window=_window(window))
    return _run(cohort, task, workers, scheduler, redo, progress)


def segment_cohort(
    cohort: Cohort | str | os.PathLike,
    model: str | os.PathLike,
    *,
    out: str | os.PathLike,
    policy: str = "stock",
    cache: str | os.PathLike | None = None,
    axis: int = 0,
    window: str | IntensityWindow | Sequence[float] | None = None,
    image_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    redo: bool = False,
    progress: ProgressCallback | None = None,
) -> CohortReport:
    """Segment every volume from its prompt file with ``policy``: labels as NIfTI on the
    image's grid in ``out/labels/``, each volume's per-slice confidence in
    ``out/cases/<name>/confidence.csv``, and ``out/segment.csv`` with the least confident
    volumes first. Embeddings in ``cache`` (see :func:`embed_cohort`, with the same ``window``)
    are read, not recomputed."""
    if policy not in POLICIES:
        raise CohortError(f"the memory policy must be one of {POLICIES}, not {policy!r}")
    cache_dir = Path(cache) if cache is not None else default_cache_dir()
    task = _task("segment", model, out, cache_dir, axis, image_size, device, dtype, policy=policy,
                 window=_window(window))
    return _run(cohort, task, workers, scheduler, redo, progress)


def evaluate_cohort(
    cohort: Cohort | str | os.PathLike,
    model: str | os.PathLike,
    *,
    out: str | os.PathLike,
    policies: Sequence[str] = ("stock",),
    clicks: int = 5,
    seed: int = 0,
    start: str = "box",
    nsd_tolerance_mm: float = 2.0,
    axis: int = 0,
    window: str | IntensityWindow | Sequence[float] | None = None,
    image_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    workers: int | None = None,
    scheduler: str | None = None,
    redo: bool = False,
    progress: ProgressCallback | None = None,
) -> CohortReport:
    """Run the interactive evaluation (:mod:`napari_samed2.evaluation`) on every volume that
    has a label file: ``out/evaluate.csv`` (one row per volume, lowest final Dice first) and
    ``out/evaluation/`` (results.csv, summary.csv, summary.md and the Dice-per-click plot over
    the whole cohort). The memory library is not offered: it makes each case depend on the
    ones before it, which a parallel run cannot keep."""
    policies = [policies] if isinstance(policies, str) else list(dict.fromkeys(policies))
    if not policies or any(p not in POLICIES for p in policies):
        raise CohortError(f"memory policies must be among {POLICIES}, got {policies}")
    try:
        protocol = EvalProtocol(start=start, clicks=clicks, nsd_tolerance_mm=nsd_tolerance_mm, seed=seed,
                                window=_window(window))
    except ValueError as exc:
        raise CohortError(str(exc)) from None
    task = _task("evaluate", model, out, default_cache_dir(), axis, image_size, device, dtype,
                 protocol=protocol, policies=tuple(policies))
    return _run(cohort, task, workers, scheduler, redo, progress)


def default_workers() -> int:
    """One worker per GPU when there are GPUs, else one worker using every CPU core."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def _window(window) -> IntensityWindow | None:
    try:
        return as_window(window)
    except VolumeError as exc:
        raise CohortError(f"intensity window: {exc}") from None


def _task(kind, model, out, cache_dir, axis, image_size, device, dtype, **settings) -> CohortTask:
    if axis not in (0, 1, 2, -1, -2, -3):
        raise CohortError(f"axis must be 0, 1 or 2 (the slicing axis of the volumes), not {axis!r}")
    if image_size is not None and (image_size <= 0 or image_size % 32):
        raise CohortError(f"image size must be a positive multiple of 32, not {image_size}")
    ref = ModelRef(_check_model(model), image_size, str(device), str(dtype))
    out = check_writable(Path(out))
    return CohortTask(kind, ref, out.resolve(), Path(cache_dir).expanduser().resolve(), axis % 3, **settings)


def _check_model(model: str | os.PathLike) -> str:
    """The model argument as workers need it (a checkpoint as an absolute path), refused
    here if it names no registry model and no existing file."""
    from napari_samed2.models.loading import looks_like_path
    from napari_samed2.models.registry import get_spec

    if looks_like_path(model):
        path = Path(model).expanduser()
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {str(path)!r} does not exist; check the path or give a model name")
        return str(path.resolve())
    get_spec(os.fspath(model))  # UnknownModelError lists the names
    return os.fspath(model)


def _run(cohort, task: CohortTask, workers: int | None, scheduler: str | None, redo: bool,
         progress: ProgressCallback | None) -> CohortReport:
    cohort = cohort if isinstance(cohort, Cohort) else read_cohort(cohort)
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise CohortError(f"--workers must be 0 (in this process) or more, not {workers}")
    results = []
    try:
        for event in run_cohort(cohort, task, workers=workers, scheduler=scheduler, redo=redo):
            results.append(event.result)
            if progress is not None:
                progress(event)
    finally:  # an interrupted run still leaves the CSV of what finished
        ordered, files = write_cohort_report(task, results)
    return CohortReport(task.kind, tuple(ordered), tuple(files), evaluation_results(task, ordered))
