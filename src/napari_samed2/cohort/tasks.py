"""The work on one volume: embed, segment or evaluate it.

:func:`process_volume` is one plain function of picklable arguments, run the same way
in-process (``--workers 0``) and on a Dask worker, so a cohort on a cluster gives what the
volumes give one by one. It never raises for a volume's own failure (a damaged file, a
prompt off the volume, running out of memory): the failure becomes the volume's row, with
its error, and the other volumes go on. Each finished volume leaves a record in its own
folder (``OUT/cases/<name>/<task>.json``) holding a signature of its inputs, model and
settings; a later run keeps a volume only when that signature still matches, not merely
because its outputs exist.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import math
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_samed2.cohort.cohort import CohortVolume
from napari_samed2.errors import CohortError, LabelError, OutputFolderError, PromptFileError
from napari_samed2.evaluation.protocol import EvalProtocol, StepRecord
from napari_samed2.io.intensity import IntensityWindow

TaskKind = Literal["embed", "segment", "evaluate"]
TASKS: tuple[str, ...] = ("embed", "segment", "evaluate")
DONE, KEPT, FAILED = "done", "kept", "failed"
RECORD_VERSION = 1
CASES_FOLDER = "cases"
LABELS_FOLDER = "labels"
LABELS_SUFFIX = ".nii.gz"


@dataclass(frozen=True)
class ModelRef:
    """Which model to load and how: what travels to the workers instead of the model, which
    each worker loads once (see :func:`worker_model`). ``model`` is a registry name or a
    checkpoint file; ``device`` ``"auto"`` gives each local worker a GPU of its own."""

    model: str
    image_size: int | None = None
    device: str = "auto"
    dtype: str = "auto"

    def stamp(self) -> dict[str, Any]:
        """What identifies the weights without loading them: the name, or the file's path,
        size and modification time (cheap: a run checks it for every volume before loading)."""
        from napari_samed2.models.loading import looks_like_path

        stamp: dict[str, Any] = {"model": self.model, "image_size": self.image_size, "dtype": self.dtype}
        if looks_like_path(self.model):
            stamp["file"] = file_stamp(Path(self.model))
        return stamp


@dataclass(frozen=True)
class CohortTask:
    """One command over a cohort: what to do (``kind``), with which model, where outputs go,
    and the settings of that command. ``cache_dir`` is the persistent embedding cache that
    ``embed`` fills and ``segment`` reads; ``policy`` is ``segment``'s memory policy;
    ``protocol`` and ``policies`` are ``evaluate``'s (whose protocol carries the window);
    ``window`` is the intensity window ``embed`` and ``segment`` read the slices through
    (``None``: each volume's percentiles); embeddings made through one are found only
    through the same one."""

    kind: TaskKind
    model: ModelRef
    out: Path
    cache_dir: Path
    axis: int = 0
    policy: str = "stock"
    protocol: EvalProtocol = field(default_factory=EvalProtocol)
    policies: tuple[str, ...] = ("stock",)
    window: IntensityWindow | None = None

    def settings(self) -> dict[str, Any]:
        """The settings a volume's result depends on: part of its signature (the window only
        when one is given, so results made before the option keep theirs)."""
        window = {} if self.window is None else {"window": [self.window.low, self.window.high]}
        if self.kind == "embed":
            return {"axis": self.axis, "cache_dir": str(self.cache_dir.resolve()), **window}
        if self.kind == "segment":
            return {"axis": self.axis, "policy": self.policy, **window}
        protocol = {k: v for k, v in asdict(self.protocol).items() if k != "window" or v is not None}
        return {"axis": self.axis, "protocol": protocol, "policies": list(self.policies)}

    @property
    def row_type(self) -> type:
        return {"embed": EmbedRow, "segment": SegmentRow, "evaluate": EvaluateRow}[self.kind]


# rows of the cohort CSVs ----------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedRow:
    """A volume of ``cohort embed``: its slices and how many the image encoder ran on (0
    when its embeddings were all in the cache already)."""

    name: str
    status: str
    slices: int = 0
    encoded: int = 0
    seconds: float = math.nan
    worker: str = ""
    image: str = ""
    error: str = ""


@dataclass(frozen=True)
class SegmentRow:
    """A volume of ``cohort segment``: the model's confidence (predicted IoU x object
    presence, see :func:`~napari_samed2.engine.memory.confidence_of`) over the slices where
    each object is predicted present, and the least confident (object, slice) to look at
    first. Absent slices are left out: their confidence is near 0 by definition, which
    would make every volume's minimum 0. ``labels`` is relative to the output folder."""

    name: str
    status: str
    slices: int = 0
    objects: int = 0
    present_slices: int = 0
    mean_confidence: float = math.nan
    min_confidence: float = math.nan
    least_confident_slice: int = -1
    least_confident_object: int = 0
    encoded: int = 0
    seconds: float = math.nan
    labels: str = ""
    worker: str = ""
    image: str = ""
    error: str = ""


@dataclass(frozen=True)
class EvaluateRow:
    """A volume of ``cohort evaluate``: means over its objects and policies of the final
    Dice and NSD and of the Dice AUC over the steps (every step is in the combined
    results.csv)."""

    name: str
    status: str
    objects: int = 0
    steps: int = 0
    final_dice: float = math.nan
    final_nsd: float = math.nan
    dice_auc: float = math.nan
    seconds: float = math.nan
    worker: str = ""
    image: str = ""
    error: str = ""


Row = EmbedRow | SegmentRow | EvaluateRow


@dataclass(frozen=True)
class VolumeResult:
    """What one volume gives back: its row, and for ``evaluate`` every step record (for the
    combined results.csv and summary), the model's description and notes (assumed spacing)."""

    row: Row
    records: tuple[StepRecord, ...] = ()
    model: str = ""
    notes: tuple[str, ...] = ()
    cache_files: tuple[str, ...] = ()  # embed: the files its embeddings are in, checked on resume

    @property
    def ok(self) -> bool:
        return self.row.status != FAILED


# the model, once per worker ------------------------------------------------------------------
_models: dict[ModelRef, Any] = {}
_model_lock = threading.Lock()
_volume_lock = threading.Lock()  # one volume at a time per process: the model is not shared across threads
model_loads = 0  # how often this process loaded a model (tests and benchmarks read it)


def worker_model(ref: ModelRef):
    """The model of ``ref``, loaded the first time this process needs it and kept: a
    worker loads it once for all its volumes, not once per volume. A different ``ref``
    replaces it (one model in memory per worker)."""
    global model_loads
    with _model_lock:
        if ref not in _models:
            from napari_samed2.models.loading import load_model

            _models.clear()
            gc.collect()
            _models[ref] = load_model(
                ref.model, device=worker_device(ref.device), dtype=ref.dtype, image_size=ref.image_size
            )
            model_loads += 1
        return _models[ref]


def worker_device(requested: str) -> str:
    """``"auto"`` on a machine with several GPUs: the GPU numbered by the Dask worker's name
    modulo the number of GPUs (a ``LocalCluster`` names its workers 0, 1, ...), so local
    workers do not share a GPU. On a cluster started with one GPU per worker
    (``CUDA_VISIBLE_DEVICES``), each worker sees one GPU and takes it."""
    if requested != "auto":
        return requested
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return requested
    index = _worker_index()
    return requested if index is None else f"cuda:{index % torch.cuda.device_count()}"


def worker_name() -> str:
    """The Dask worker running this, or ``"local"`` in-process."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


def _worker_index() -> int | None:
    name = worker_name()
    return int(name) if name.isdigit() else None


# one volume -----------------------------------------------------------------------------------
def process_volume(volume: CohortVolume, task: CohortTask) -> VolumeResult:
    """Run ``task`` on ``volume`` and record the result in the volume's folder.

    Never raises for the volume's own failure: that becomes a ``failed`` row with the error
    (and the next run tries the volume again). Only a record that cannot be written raises.
    """
    import dask

    signature = volume_signature(volume, task)
    worker = worker_name()
    with _volume_lock, dask.config.set(scheduler="synchronous"):  # lazy (dask) volumes read in this task
        try:
            model = worker_model(task.model)
            start = time.perf_counter()
            result = _RUNNERS[task.kind](volume, task, model)
            row = replace(result.row, status=DONE, seconds=time.perf_counter() - start, worker=worker)
            result = replace(result, row=row)
        except Exception as exc:  # noqa: BLE001 - any failure of one volume is reported, not raised
            result = failed_result(volume, task, _describe(exc), worker)
        finally:
            _release_memory()
    write_record(volume, task, signature, result)
    return result


def failed_result(volume: CohortVolume, task: CohortTask, error: str, worker: str = "") -> VolumeResult:
    return VolumeResult(task.row_type(volume.name, FAILED, worker=worker, image=str(volume.image), error=error))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if type(exc).__name__ in ("OutOfMemoryError", "MemoryError"):
        return f"out of memory ({text}): run fewer workers per GPU or machine, or a smaller --image-size"
    from napari_samed2.errors import SamEd2Error

    return text if isinstance(exc, SamEd2Error) else f"{type(exc).__name__}: {text}"


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _read_image(volume: CohortVolume) -> tuple[Any, dict[str, Any]]:
    """The image as napari gets it from the plugin's reader (so its embedding-cache keys
    are the ones a session opened in napari computes), and the layer's geometry."""
    from napari_samed2.io import read_image

    if not volume.image.is_file():
        from napari_samed2.errors import ImageFileError

        raise ImageFileError(f"the image file {volume.image} does not exist; fix the cohort's path")
    layers = read_image(volume.image)
    if len(layers) != 1:
        raise CohortError(f"{volume.image.name} holds {len(layers)} layers; give a file with one volume")
    data, kwargs, _ = layers[0]
    return data, kwargs


def _embed(volume: CohortVolume, task: CohortTask, model) -> VolumeResult:
    from napari_samed2.engine import EmbeddingCache, Session

    data, _ = _read_image(volume)
    cache = EmbeddingCache(memory_bytes=0, directory=task.cache_dir)  # each frame goes straight to disk
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failed write is raised below, with the folder named
            session = Session(model, data, axis=task.axis, cache=cache, undo_steps=0, normalise=task.window)
            for _ in session.encode():
                pass
            cache.flush()
        if cache.write_error is not None:
            raise OutputFolderError(
                f"cannot write embeddings to {task.cache_dir} ({cache.write_error}); free disk space or give "
                "another --cache folder"
            )
        files = tuple(f"{session.cache_key(f)}.safetensors" for f in range(len(session.volume)))
    finally:
        cache.close()
    return VolumeResult(
        EmbedRow(volume.name, DONE, slices=len(session.volume), encoded=session.frames_encoded, image=str(volume.image)),
        cache_files=files,
    )


def _segment(volume: CohortVolume, task: CohortTask, model) -> VolumeResult:
    from napari_samed2.cohort.prompts import read_prompts
    from napari_samed2.engine import EmbeddingCache, Session
    from napari_samed2.engine.confidence_table import write_confidence_csv
    from napari_samed2.io import write_labels

    if volume.prompts is None:
        raise PromptFileError(
            f"{volume.name} has no prompt file: put {volume.name}.json (or a saved session folder) beside the "
            "image or in a prompts/ subfolder, or give a prompts column in the cohort CSV"
        )
    prompts = read_prompts(volume.prompts)
    data, layer = _read_image(volume)
    cache = EmbeddingCache(shared=task.cache_dir)  # what `cohort embed` stored is read, not recomputed
    try:
        session = Session(model, data, axis=task.axis, policy=task.policy, cache=cache, undo_steps=0,
                          normalise=task.window)
        if len(session.volume.spatial_shape) != 3:
            raise CohortError(
                f"{volume.image.name} has shape {session.volume.shape}; the cohort tools segment 3D volumes "
                "(slices, rows, columns): take one time point or channel first"
            )
        prompts.check(session.volume.shape, len(session.volume), session.volume.frame_shape)
        for object_id in sorted(prompts.objects):
            session.add_object(object_id)
        for object_id, slices in sorted(prompts.objects.items()):
            for frame, prompt in sorted(slices.items()):
                session.segment_frame(frame, object_id, prompt)
        for object_id, slices in sorted(prompts.objects.items()):
            if slices:  # each object from its own first prompt, as a user propagates it
                for _ in session.propagate("both", object_ids=[object_id]):
                    pass
        labels = np.moveaxis(session.labels(), 0, session.volume.axis)
        entries = session.memory_entries()
    finally:
        cache.close()
    case = ensure_folder(task.out / CASES_FOLDER / volume.name)
    labels_path = ensure_folder(task.out / LABELS_FOLDER) / f"{volume.name}{LABELS_SUFFIX}"
    write_labels(labels_path, labels, metadata=layer.get("metadata"), scale=layer.get("scale"),
                 translate=layer.get("translate"), overwrite=True)
    write_confidence_csv(entries, case / "confidence.csv", overwrite=True)
    return VolumeResult(SegmentRow(
        volume.name, DONE, slices=len(session.volume), objects=len(session.object_ids),
        encoded=session.frames_encoded, labels=str(labels_path.relative_to(task.out)), image=str(volume.image),
        **confidence_summary(entries),
    ))


def confidence_summary(entries) -> dict[str, Any]:
    """Mean and minimum confidence over the (object, slice) pairs where the object is
    predicted present, and where the minimum is; a volume whose objects all vanished
    scores 0."""
    present = [e for e in entries if e.frame >= 0 and e.object_score > 0]
    if not present:
        return {"present_slices": 0, "mean_confidence": 0.0, "min_confidence": 0.0}
    worst = min(present, key=lambda e: (e.confidence, e.object_id, e.frame))
    return {
        "present_slices": len(present),
        "mean_confidence": float(np.mean([e.confidence for e in present])),
        "min_confidence": worst.confidence,
        "least_confident_slice": worst.frame,
        "least_confident_object": worst.object_id,
    }


def _evaluate(volume: CohortVolume, task: CohortTask, model) -> VolumeResult:
    from napari_samed2.evaluation import EvalCase
    from napari_samed2.evaluation.protocol import run_case
    from napari_samed2.evaluation.report import summarize

    if volume.label is None:
        raise LabelError(
            f"{volume.name} has no label file, which evaluation scores against: put {volume.name}_label.nii.gz "
            "beside the image (or in labels/), or give a label column in the cohort CSV"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        case = EvalCase.from_files(volume.image, volume.label, name=volume.name)
    notes = tuple(f"{volume.name}: {w.message}" for w in caught)
    axis = task.axis % 3
    records = tuple(
        record for policy in task.policies for record in run_case(model, case, task.protocol, policy, axis=axis)
    )
    summaries = summarize(records, task.protocol)
    return VolumeResult(
        EvaluateRow(
            volume.name, DONE, objects=len(case.object_ids), steps=len(records),
            final_dice=float(np.mean([s.final_dice for s in summaries])),
            final_nsd=float(np.mean([s.final_nsd for s in summaries])),
            dice_auc=float(np.mean([s.dice_auc for s in summaries])),
            image=str(volume.image),
        ),
        records, model.describe(), notes,
    )


_RUNNERS = {"embed": _embed, "segment": _segment, "evaluate": _evaluate}


# records: what a later run keeps ---------------------------------------------------------------
def file_stamp(path: Path | None) -> list | None:
    """A file (or a saved session folder) as its resolved path, size and modification
    time: cheap to take for hundreds of large volumes, and changed by any rewrite."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return [file_stamp(p) for p in sorted(path.iterdir()) if p.is_file()]
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def volume_signature(volume: CohortVolume, task: CohortTask) -> str:
    """A digest of the volume's input files, the model and the task's settings."""
    text = json.dumps({
        "version": RECORD_VERSION,
        "task": task.kind,
        "image": file_stamp(volume.image),
        "label": file_stamp(volume.label) if task.kind == "evaluate" else None,
        "prompts": file_stamp(volume.prompts) if task.kind == "segment" else None,
        "model": task.model.stamp(),
        "settings": task.settings(),
    }, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def record_path(volume: CohortVolume, task: CohortTask) -> Path:
    return task.out / CASES_FOLDER / volume.name / f"{task.kind}.json"


def write_record(volume: CohortVolume, task: CohortTask, signature: str, result: VolumeResult) -> Path:
    """The volume's record, written whole or not at all, after its outputs."""
    from napari_samed2.io._files import replacing

    state = {
        "signature": signature,
        "row": asdict(result.row),
        "records": [asdict(r) for r in result.records],
        "model": result.model,
        "notes": list(result.notes),
        "cache_files": list(result.cache_files),
    }
    path = record_path(volume, task)
    ensure_folder(path.parent)
    with replacing(path, overwrite=True) as partial:
        partial.write_text(json.dumps(state))
    return path


def kept_result(volume: CohortVolume, task: CohortTask) -> VolumeResult | None:
    """The result of an earlier run, if it finished and its signature still matches (and
    its outputs are still there); else None, and the volume runs again."""
    path = record_path(volume, task)
    try:
        state = json.loads(path.read_text())
        if state["signature"] != volume_signature(volume, task) or state["row"]["status"] != DONE:
            return None
        row = _row_from(task.row_type, state["row"])
        records = tuple(StepRecord(**r) for r in state["records"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    files = tuple(state.get("cache_files", ()))
    if task.kind == "embed" and not (files and all((task.cache_dir / name).is_file() for name in files)):
        return None  # the cache was cleaned since: embed again
    if task.kind == "segment" and not (task.out / row.labels).is_file():
        return None
    return VolumeResult(
        replace(row, status=KEPT), records, state.get("model", ""), tuple(state.get("notes", ())), files
    )


def _row_from(row_type: type, values: dict) -> Row:
    names = {f.name for f in fields(row_type)}
    return row_type(**{k: v for k, v in values.items() if k in names})


def ensure_folder(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create {folder} ({exc.strerror or exc}); choose an output folder you can write to") from exc
    return folder


def os_cpu_count() -> int:
    """CPUs this process may run on (a container's limit, not the host's count)."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1

