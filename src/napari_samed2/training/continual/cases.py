"""The store of confirmed cases: what continual adaptation learns from and replays.

A case is the slice range of a volume that holds the user's confirmed objects: the raw image
slices, the label ids on them (one mask per object), the prompts the user gave, the source
volume's intensity window and a descriptor for retrieval. The descriptor is the memory
library's fingerprint (:func:`~napari_samed2.engine.memory.image_descriptor`, the 4x4-pooled
top-level image embedding) averaged over the case's slices after scaling each to unit length:
one notion of "similar" for both retrievals, free after a session (every tracked frame already
has it), and stable across model versions, since adaptation never changes the image encoder.

On disk a store is a folder: ``index.json`` and ``descriptors.safetensors`` (written as one
pair, JSON last, see :mod:`napari_samed2.engine.saved`) and one ``cases/<id>.safetensors``
per case, each written to a temporary name and renamed. A case file is written before the
index names it and deleted only after the index forgets it, so an interrupted write leaves at
worst an unlisted file. The store is bounded (``max_cases``, ``max_bytes``): beyond either,
the least used case goes first (uses = times it was replayed), the oldest among equals.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_samed2.engine.memory import cosine
from napari_samed2.engine.prompts import FramePrompt
from napari_samed2.engine.saved import consistent, read_pair, write_pair
from napari_samed2.errors import SavedStateError, SessionError, TrainingError
from napari_samed2.io._files import replacing
from napari_samed2.io.intensity import IntensityWindow
from napari_samed2.training.data import VolumePair, make_pair

INDEX = "index.json"
DESCRIPTORS = "descriptors.safetensors"
CASES = "cases"
FORMAT = "napari-samed2/cases"
DEFAULT_MAX_CASES = 200
DEFAULT_MAX_BYTES = 2 << 30


@dataclass(frozen=True, eq=False)
class CasePrompt:
    """A prompt the user gave: ``object_id`` on ``frame`` (a slice of the stored case)."""

    object_id: int
    frame: int
    prompt: FramePrompt


@dataclass(frozen=True, eq=False)
class ConfirmedCase:
    """One confirmed volume (its slice range holding objects), ready to learn from.

    ``image``/``labels``: ``(Z, H, W)`` raw slices and object ids; ``first_slice``: where they
    start in the source volume; ``window``: the source volume's intensity window (``None``:
    percentiles of these slices); ``descriptor``: unit-length fingerprint (see module doc).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    descriptor: torch.Tensor
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    window: tuple[float, float] | None = None
    first_slice: int = 0
    prompts: tuple[CasePrompt, ...] = ()
    key: str = field(init=False)

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape != self.labels.shape:
            raise TrainingError(
                f"case {self.name!r}: image {self.image.shape} and labels {self.labels.shape} must be one (Z, H, W) shape"
            )
        if not self.labels.any():
            raise TrainingError(f"case {self.name!r} has no object: confirm a volume with at least one mask")
        digest = hashlib.blake2b(digest_size=12)
        for array in (self.image, self.labels):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(array.data)
        object.__setattr__(self, "key", digest.hexdigest())
        object.__setattr__(self, "descriptor", unit(self.descriptor))

    @property
    def nbytes(self) -> int:
        masks = sum(p.prompt.mask.nbytes for p in self.prompts if p.prompt.mask is not None)
        return int(self.image.nbytes + self.labels.nbytes + masks)

    def pair(self, name: str | None = None) -> VolumePair:
        """The case as a training :class:`VolumePair`, normalised with the source's window."""
        pair = make_pair(self.image, self.labels, name=name or self.name, spacing=self.spacing)
        return pair if self.window is None else replace(pair, window=IntensityWindow(*self.window))


def unit(descriptor: torch.Tensor) -> torch.Tensor:
    return F.normalize(descriptor.detach().float().flatten().cpu(), dim=0)


def mean_descriptor(descriptors) -> torch.Tensor:
    """Slice fingerprints averaged, each scaled to unit length first (so no slice dominates)."""
    descriptors = list(descriptors)
    if not descriptors:
        raise TrainingError("no slice fingerprints to describe the case with")
    return unit(torch.stack([unit(d) for d in descriptors]).mean(0))


def frame_descriptors(model, volume, frames) -> list[torch.Tensor]:
    """The fingerprint of each of ``frames`` of ``volume`` (a :class:`Volume`), one image-encoder run each."""
    from napari_samed2.engine.step import encode_images

    descriptors = []
    with model.inference():
        for frame in frames:
            images = model.input_for(volume, frame)[None].to(model.device)
            descriptors.append(encode_images(model.sam, images)[0].descriptor.cpu())
    return descriptors


def volume_descriptor(model, image: np.ndarray, window: tuple[float, float] | None = None) -> torch.Tensor:
    """The case descriptor of ``image`` (``(Z, H, W)``), each slice through the image encoder."""
    from napari_samed2.engine.volume import Volume

    volume = Volume(image, normalise=None if window is None else IntensityWindow(*window))
    return mean_descriptor(frame_descriptors(model, volume, range(len(volume))))


def case_from_arrays(model, image, labels, *, name: str, spacing=(1.0, 1.0, 1.0), window=None) -> ConfirmedCase:
    """A case from a labelled volume (frames first), e.g. for scripts and benchmarks."""
    image, labels = np.asarray(image), np.asarray(labels)
    if window is None and image.ndim == 3:
        full = IntensityWindow.from_percentiles(image)
        window = (full.low, full.high)
    return ConfirmedCase(
        name, image, labels.astype(np.uint16), volume_descriptor(model, image, window),
        tuple(float(s) for s in spacing), window,
    )


def case_from_session(session, *, name: str = "", spacing=(1.0, 1.0, 1.0)) -> ConfirmedCase:
    """The session's current result as a case: the slices from the first to the last that
    hold a mask, the masks as labels, the prompts on those slices, the fingerprints its
    tracked frames already have (the image encoder runs only for slices without one)."""
    volume = session.volume
    if volume.rgb:
        raise SessionError("continual adaptation learns from grayscale volumes; this one has colour channels")
    labels = session.labels()
    present = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    if not len(present):
        raise SessionError("nothing to confirm: no object has a mask yet. Segment and propagate first.")
    first, last = int(present[0]), int(present[-1])
    image = np.stack([volume.raw_frame(f) for f in range(first, last + 1)])
    normalise = volume.normalise
    window = (normalise.low, normalise.high) if isinstance(normalise, IntensityWindow) else None
    known = {e.frame: e.descriptor for e in session.memory_entries() if e.frame >= 0 and e.descriptor is not None}
    missing = [f for f in range(first, last + 1) if f not in known]
    known.update(zip(missing, frame_descriptors(session.model, volume, missing)))
    prompts = tuple(
        CasePrompt(object_id, frame - first, prompt)
        for object_id, frames in sorted(session.prompts.items())
        for frame, prompt in sorted(frames.items())
        if first <= frame <= last
    )
    return ConfirmedCase(
        name or "case", image, labels[first : last + 1], mean_descriptor(known[f] for f in range(first, last + 1)),
        tuple(float(s) for s in spacing), window, first, prompts,
    )


@dataclass(frozen=True)
class Confirmation:
    """What :func:`confirm` did: the case's id in the store, the case, and how many memories
    the library kept."""

    case_id: str
    case: ConfirmedCase
    library_kept: int


def confirm(session, store: CaseStore, *, name: str = "", spacing=(1.0, 1.0, 1.0), min_confidence: float = 0.8) -> Confirmation:
    """The user confirms the session's volume: every object's confident memories join the
    session's memory library (one is started if it has none), as "Add confirmed object" does,
    in one undo step; and the case joins ``store``, to learn from with :func:`adapt`."""
    from napari_samed2.engine.library import MemoryLibrary

    case = case_from_session(session, name=name, spacing=spacing)  # refuses an empty session first
    with session.lock:
        if session.library is None:
            session.library = MemoryLibrary()
    session.begin_step(f"confirm {case.name}")
    try:
        kept = sum(
            session.add_to_library(object_id, min_confidence=min_confidence, label=f"object {object_id}", case=case.name)
            for object_id in session.object_ids
        )
    finally:
        session.end_step()
    return Confirmation(store.add(case), case, kept)


@dataclass(frozen=True)
class Retrieved:
    """A stored case ranked for a query: its id, name and cosine similarity to the query."""

    case_id: str
    name: str
    similarity: float


@dataclass
class CaseRecord:
    """What the index holds about a stored case (``uses``: times it was replayed)."""

    case_id: str
    name: str
    key: str
    added: int
    uses: int
    nbytes: int
    spacing: tuple[float, float, float]
    window: tuple[float, float] | None
    first_slice: int
    prompts: list[dict]


class CaseStore:
    """Confirmed cases in a folder, bounded; open one with :meth:`open`."""

    def __init__(self, folder: Path, rows: list[CaseRecord], descriptors: dict[str, torch.Tensor], max_cases: int, max_bytes: int):
        self.folder = folder
        self._rows = rows
        self._descriptors = descriptors
        self.max_cases = max_cases
        self.max_bytes = max_bytes

    @classmethod
    def open(
        cls, folder: str | Path, *, create: bool = True, max_cases: int | None = None, max_bytes: int | None = None
    ) -> CaseStore:
        """The store in ``folder``; with ``create``, a new empty one where the folder has none
        (a folder holding case files but no index is refused rather than overwritten)."""
        folder = Path(folder).expanduser()
        index = folder / INDEX
        if not index.exists() and create and not (folder / DESCRIPTORS).exists() and not any((folder / CASES).glob("*")):
            store = cls(folder, [], {}, max_cases or DEFAULT_MAX_CASES, max_bytes or DEFAULT_MAX_BYTES)
            store._check_bounds()
            return store
        if not index.exists() and not create:
            raise SavedStateError(f"no case store in {folder}: CaseStore.open(folder) without create=False starts one")
        document, tensors = read_pair(folder, INDEX, DESCRIPTORS, "case store", ("format", "cases", "max_cases", "max_bytes"))
        with consistent(folder, "case store"):
            if document["format"] != FORMAT:
                raise ValueError(f"format {document['format']!r}")
            rows = [CaseRecord(**row) for row in document["cases"]]
            for row in rows:
                row.spacing = tuple(row.spacing)
                row.window = None if row.window is None else tuple(row.window)
            descriptors = {row.case_id: tensors[row.case_id] for row in rows}
        store = cls(folder, rows, descriptors, max_cases or document["max_cases"], max_bytes or document["max_bytes"])
        store._check_bounds()
        return store

    def _check_bounds(self) -> None:
        if self.max_cases < 1 or self.max_bytes < 1:
            raise TrainingError(f"a case store needs room for a case: max_cases {self.max_cases}, max_bytes {self.max_bytes}")

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def records(self) -> tuple[CaseRecord, ...]:
        return tuple(self._rows)

    @property
    def ids(self) -> list[str]:
        return [row.case_id for row in self._rows]

    @property
    def nbytes(self) -> int:
        return sum(row.nbytes for row in self._rows)

    def _row(self, case_id: str) -> CaseRecord:
        for row in self._rows:
            if row.case_id == case_id:
                return row
        raise TrainingError(f"no case {case_id!r} in the store {self.folder}; its cases are {self.ids}")

    def _case_file(self, case_id: str) -> Path:
        return self.folder / CASES / f"{case_id}.safetensors"

    # adding and dropping ------------------------------------------------------------------
    def add(self, case: ConfirmedCase) -> str:
        """Store ``case`` (the same image and labels again: the stored one is kept). Returns
        its id; drops least-used cases first when the store is over a bound."""
        from safetensors.torch import save

        for row in self._rows:
            if row.key == case.key:
                return row.case_id
        if case.nbytes > self.max_bytes:
            raise TrainingError(
                f"case {case.name!r} needs {case.nbytes / 2**20:.1f} MiB, more than the store's max_bytes "
                f"({self.max_bytes / 2**20:.1f} MiB): open the store with a larger max_bytes"
            )
        number = 1 + max((row.added for row in self._rows), default=0)
        case_id = f"c{number:05d}"
        tensors = {"image": torch.from_numpy(np.ascontiguousarray(case.image)),
                   "labels": torch.from_numpy(np.ascontiguousarray(case.labels.astype(np.int32)))}
        prompts = []
        for i, item in enumerate(case.prompts):
            p = item.prompt
            prompts.append({"object_id": item.object_id, "frame": item.frame, "points": p.points.tolist(),
                            "labels": p.labels.tolist(), "box": None if p.box is None else list(p.box)})
            if p.mask is not None:
                tensors[f"prompt_mask.{i}"] = torch.from_numpy(np.ascontiguousarray(p.mask))
        (self.folder / CASES).mkdir(parents=True, exist_ok=True)
        with replacing(self._case_file(case_id), overwrite=True) as partial:
            partial.write_bytes(save(tensors))
        self._rows.append(CaseRecord(case_id, case.name, case.key, number, 0, case.nbytes, case.spacing, case.window,
                               case.first_slice, prompts))
        self._descriptors[case_id] = case.descriptor
        dropped = self._over_bounds(keep=case_id)
        self._rows = [row for row in self._rows if row.case_id not in dropped]
        self._save_index()
        for case_id_dropped in dropped:
            self._descriptors.pop(case_id_dropped)
            self._case_file(case_id_dropped).unlink(missing_ok=True)
        return case_id

    def _over_bounds(self, keep: str) -> set[str]:
        """The cases to drop to fit the bounds: least used first, oldest among equals."""
        order = sorted((row for row in self._rows if row.case_id != keep), key=lambda r: (r.uses, r.added))
        count, size, dropped = len(self._rows), self.nbytes, set()
        for row in order:
            if count <= self.max_cases and size <= self.max_bytes:
                break
            dropped.add(row.case_id)
            count, size = count - 1, size - row.nbytes
        return dropped

    def remove(self, case_id: str) -> None:
        self._row(case_id)
        self._rows = [row for row in self._rows if row.case_id != case_id]
        self._descriptors.pop(case_id)
        self._save_index()
        self._case_file(case_id).unlink(missing_ok=True)

    def mark_used(self, case_ids) -> None:
        """Count a replay of each case (the least used go first when the store is full)."""
        for case_id in case_ids:
            self._row(case_id).uses += 1
        self._save_index()

    def _save_index(self) -> None:
        document = {"format": FORMAT, "max_cases": self.max_cases, "max_bytes": self.max_bytes,
                    "cases": [asdict(row) for row in self._rows]}
        tensors = {row.case_id: self._descriptors[row.case_id].contiguous() for row in self._rows}
        write_pair(self.folder, INDEX, document, DESCRIPTORS, tensors)

    # reading -----------------------------------------------------------------------------
    def case(self, case_id: str) -> ConfirmedCase:
        """The stored case (its image and labels read from its file)."""
        from safetensors.torch import load_file

        row = self._row(case_id)
        path = self._case_file(case_id)
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # missing, truncated: safetensors raises its own types
            raise SavedStateError(
                f"case {case_id} ({row.name!r}) of the store {self.folder} cannot be read ({exc}). Remove it "
                f"(CaseStore.remove({case_id!r})) or restore the folder from a backup; the other cases are intact."
            ) from exc
        with consistent(self.folder, "case store"):
            prompts = tuple(
                CasePrompt(p["object_id"], p["frame"], FramePrompt(
                    np.asarray(p["points"], np.float32).reshape(-1, 2), np.asarray(p["labels"], np.int32),
                    box=None if p["box"] is None else tuple(p["box"]),
                    mask=tensors[f"prompt_mask.{i}"].numpy() if f"prompt_mask.{i}" in tensors else None,
                ))
                for i, p in enumerate(row.prompts)
            )
            return ConfirmedCase(row.name, tensors["image"].numpy(), tensors["labels"].numpy().astype(np.uint16),
                                 self._descriptors[case_id], row.spacing, row.window, row.first_slice, prompts)

    def retrieve(self, descriptor: torch.Tensor, k: int, *, exclude=()) -> list[Retrieved]:
        """The ``k`` stored cases most similar to ``descriptor`` (cosine), best first;
        ``exclude``: case keys (:attr:`ConfirmedCase.key`) to leave out, e.g. the new case."""
        query = unit(descriptor)
        ranked = []
        for row in self._rows:
            stored = self._descriptors[row.case_id]
            if row.key in exclude:
                continue
            if stored.numel() != query.numel():
                raise TrainingError(
                    f"case {row.case_id} of {self.folder} was described by another model architecture "
                    f"({stored.numel()} values, this model gives {query.numel()}): use one store per architecture"
                )
            ranked.append(Retrieved(row.case_id, row.name, cosine(query, stored)))
        return sorted(ranked, key=lambda r: -r.similarity)[: max(0, k)]
