"""The retrieval library: confirmed memories from earlier cases that guide new ones.

This is SAMed-2's memory bank made persistent and user-driven. Each entry holds a mask
memory (sam2's 64-channel memory features), a fingerprint of the image it came from and
the predicted IoU. For a frame being segmented, the ``k`` entries with the best
``clamp(cosine, 0) + sigmoid(IoU)`` join sam2's memory attention (as in the SAMed-2 release:
without temporal encoding or object pointer). At capacity, a new entry replaces the stored
entry most similar to it, and only if its IoU is higher (the release's update rule).

On disk a library is a folder: ``entries.safetensors`` (tensors) and ``index.json``
(everything else). Nothing is ever unpickled; the official ``.pkl`` bank is imported with
``torch.load(weights_only=True)``, which refuses arbitrary Python objects.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from napari_samed2.engine.memory import EntrySource, MemoryEntry, cosine, image_descriptor
from napari_samed2.engine.saved import consistent, read_pair, write_pair
from napari_samed2.errors import CheckpointError
from napari_samed2.models.checkpoint import explain_refusal

DEFAULT_CAPACITY = 640  # the release's bank size


@dataclass(eq=False)
class LibraryEntry:
    maskmem_features: torch.Tensor  # [1, 64, h, w], bfloat16
    descriptor: torch.Tensor  # image fingerprint, see memory.image_descriptor
    predicted_iou: float
    label: str = ""
    case: str = ""


@dataclass(frozen=True)
class Placement:
    """What :meth:`MemoryLibrary.place` did: ``added`` stored, in place of ``replaced``
    (``None``: appended at the end)."""

    replaced: LibraryEntry | None
    added: LibraryEntry


@dataclass(frozen=True)
class _IndexRow:
    predicted_iou: float
    label: str
    case: str


def retrieval_score(descriptor: torch.Tensor, entry: LibraryEntry) -> float:
    """SAMed-2's score. Its IoU is already a sigmoid output, so the second sigmoid squeezes
    it into [0.5, 0.73]: similarity dominates, as in the release."""
    return max(cosine(descriptor, entry.descriptor), 0.0) + 1.0 / (1.0 + math.exp(-entry.predicted_iou))


class MemoryLibrary:
    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError("a library needs room for at least one entry")
        self.capacity = capacity
        self.entries: list[LibraryEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: LibraryEntry) -> bool:
        """Store ``entry``; at capacity it replaces the most similar entry if its IoU is higher.

        Returns whether the entry was kept.
        """
        return self.place(entry) is not None

    def place(self, entry: LibraryEntry) -> Placement | None:
        """:meth:`add`, saying what happened: ``None`` when the entry was not kept, else
        the entry it replaced (``None`` when appended), so that the caller can undo it."""
        if len(self.entries) < self.capacity:
            self.entries.append(entry)
            return Placement(None, entry)
        similarities = [cosine(entry.descriptor, other.descriptor) for other in self.entries]
        nearest = max(range(len(self.entries)), key=similarities.__getitem__)
        if entry.predicted_iou > self.entries[nearest].predicted_iou:
            replaced, self.entries[nearest] = self.entries[nearest], entry
            return Placement(replaced, entry)
        return None

    def remove(self, entry: LibraryEntry) -> bool:
        """Take ``entry`` (this very object) out; the entries after it move up one index.
        Returns whether it was there."""
        for index, other in enumerate(self.entries):
            if other is entry:
                del self.entries[index]
                return True
        return False

    def swap(self, old: LibraryEntry, new: LibraryEntry) -> bool:
        """Put ``new`` where ``old`` (this very object) is. Returns whether ``old`` was there."""
        for index, other in enumerate(self.entries):
            if other is old:
                self.entries[index] = new
                return True
        return False

    def retrieve(self, descriptor: torch.Tensor, k: int) -> list[tuple[int, float]]:
        """The ``k`` best ``(index, score)`` pairs for an image fingerprint, best first."""
        descriptor = descriptor.cpu()
        scored = [(i, retrieval_score(descriptor, e)) for i, e in enumerate(self.entries)]
        return sorted(scored, key=lambda pair: -pair[1])[:k]

    # persistence --------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write the library to ``folder``; a save that fails leaves an earlier one as it was."""
        tensors = {}
        for i, entry in enumerate(self.entries):
            tensors[f"{i}.maskmem"] = entry.maskmem_features.contiguous().cpu()
            tensors[f"{i}.descriptor"] = entry.descriptor.contiguous().cpu()
        index = {
            "capacity": self.capacity,
            "entries": [asdict(_IndexRow(e.predicted_iou, e.label, e.case)) for e in self.entries],
        }
        return write_pair(folder, "index.json", index, "entries.safetensors", tensors)

    @classmethod
    def load(cls, folder: str | Path) -> MemoryLibrary:
        index, tensors = read_pair(folder, "index.json", "entries.safetensors", "memory library", ("capacity", "entries"))
        with consistent(folder, "memory library"):
            library = cls(index["capacity"])
            rows = index["entries"]
            if len(rows) > library.capacity or len(tensors) != 2 * len(rows):
                raise ValueError(f"{len(rows)} entries listed, {len(tensors)} tensors stored, capacity {library.capacity}")
            for i, row in enumerate(rows):
                library.entries.append(
                    LibraryEntry(tensors[f"{i}.maskmem"], tensors[f"{i}.descriptor"], **row)
                )
        return library

    @classmethod
    def import_samed2_bank(cls, path: str | Path, capacity: int | None = None) -> MemoryLibrary:
        """Read the release's ``memory_bank_list_*.pkl``: entries of ``[maskmem_features,
        maskmem_pos_enc, IoU, image embedding]``. Position encodings are not kept (they are
        the same for every entry and recomputed by our model)."""
        path = Path(path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # weights_only refuses anything beyond tensors and containers
            raise CheckpointError(
                f"{path.name} was refused: {explain_refusal(path, exc).reason}. "
                "Only the SAMed-2 release's memory bank file (a list of tensors) can be imported."
            ) from exc
        if not isinstance(raw, (list, tuple)) or not raw:
            raise CheckpointError(f"{path.name} does not hold a list of memory entries")
        library = cls(capacity or len(raw))
        for number, item in enumerate(raw):
            try:
                maskmem, _pos_enc, iou, embedding = item
                channels = maskmem.shape[1]
                side = int(round(math.sqrt(embedding.numel() // 256)))
                embedding = embedding.float().reshape(1, 256, side, side)
                entry = LibraryEntry(
                    maskmem.to(torch.bfloat16).reshape(1, channels, *maskmem.shape[-2:]),
                    image_descriptor(embedding),
                    float(torch.as_tensor(iou).float().mean()),
                    case=f"samed2-bank:{number}",
                )
            except (TypeError, ValueError, RuntimeError, AttributeError) as exc:
                raise CheckpointError(f"entry {number} of {path.name} is not [features, pos_enc, IoU, embedding]: {exc}") from exc
            library.add(entry)
        return library


def memory_tokens(
    entries: list[LibraryEntry], feat_size: tuple[int, int], pos_enc: torch.Tensor, device, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Library entries as sam2 memory tokens ``[hw * n, 1, 64]`` plus their positions
    (spatial encoding only: no temporal encoding, as in the SAMed-2 release)."""
    features, positions = [], []
    pos = pos_enc.to(device=device, dtype=dtype).flatten(2).permute(2, 0, 1)
    for entry in entries:
        maskmem = entry.maskmem_features.to(device=device, dtype=dtype)
        if tuple(maskmem.shape[-2:]) != tuple(feat_size):
            maskmem = F.interpolate(maskmem, size=feat_size, mode="bilinear", align_corners=False)
        features.append(maskmem.flatten(2).permute(2, 0, 1))
        positions.append(pos)
    return torch.cat(features), torch.cat(positions)


def library_row(object_id: int, index: int, entry: LibraryEntry) -> MemoryEntry:
    """Library entry ``index`` as a row of an object's memory bank (frame ``-1 - index``), so
    the inspector lists it and the user can pin or evict it like a slice's memory."""
    return MemoryEntry(
        object_id=object_id, frame=-1 - index, conditioning=False, reverse=False,
        predicted_iou=entry.predicted_iou, object_score=float("inf"), low_res_logits=None,
        obj_ptr=None, maskmem_features=entry.maskmem_features, descriptor=entry.descriptor,
        source=EntrySource.LIBRARY,
    )


@contextlib.contextmanager
def library_tokens_in(memory_attention: torch.nn.Module, tokens: tuple[torch.Tensor, torch.Tensor] | None) -> Iterator[None]:
    """Put library ``tokens`` (from :func:`memory_tokens`) into sam2's memory attention, before
    the object pointers, for the calls inside the block only.

    A forward pre-hook adds them, so the shared model is unchanged for anything else (the
    stock predictor included).
    """
    if tokens is None:
        yield
        return
    features, positions = tokens

    def add_tokens(_module, args, kwargs):
        memory, memory_pos = kwargs["memory"], kwargs["memory_pos"]
        split = memory.shape[0] - kwargs.get("num_obj_ptr_tokens", 0)
        kwargs["memory"] = torch.cat([memory[:split], features.to(memory.dtype), memory[split:]])
        kwargs["memory_pos"] = torch.cat([memory_pos[:split], positions.to(memory_pos.dtype), memory_pos[split:]])
        return args, kwargs

    handle = memory_attention.register_forward_pre_hook(add_tokens, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
