"""Image embeddings computed once per frame: a bounded in-memory LRU backed by a disk store.

The image encoder is most of a frame's cost, and stock sam2 keeps only the latest frame's
features, so every re-propagation re-encodes the whole volume. Here a frame's features are
keyed by a digest of its content, its normalisation and the model, so re-prompting a slice,
adding an object or re-propagating after a correction reuses them. The in-memory part is
bounded in bytes; what it evicts goes to disk (a temporary folder by default, deleted with the
cache, or a folder you choose, which then persists across sessions like micro-sam's
embedding files). Features on a GPU are written from a background thread, so the GPU's
queue of work does not drain for each write (a few writes in flight at most, to keep memory
bounded). Features on the CPU are written at once: torch's threads already hold every core
there, and a writer thread beside them slowed propagation by ~15 % on 2 cores (its wake-ups
preempt spinning OpenMP workers), while the write itself takes ~2 ms a frame at 512 px.

The disk is a convenience, never a requirement: a folder that cannot be written (deleted,
read-only, full) switches writing off with one :class:`EmbeddingCacheWarning`, after which
evicted features are re-encoded when needed; a file that does not read back (truncated by a
crash, damaged, from another version) is deleted and its features recomputed.

A cache can also read ``shared`` folders it never writes to: :func:`default_cache_dir` is
where ``python -m napari_samed2.cohort embed`` stores a cohort's embeddings and where a
:class:`~napari_samed2.engine.session.Session` made without a cache looks, so a volume
embedded overnight opens without running the image encoder.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

DEFAULT_MEMORY_BYTES = 256 * 2**20
MAX_WRITES_IN_FLIGHT = 4
_DISK_ERRORS = (OSError, SafetensorError)
CACHE_DIR_ENV = "NAPARI_SAMED2_EMBEDDINGS"


def default_cache_dir() -> Path:
    """The folder for embeddings kept across sessions: ``$NAPARI_SAMED2_EMBEDDINGS``, else
    ``napari-samed2/embeddings`` in the user's cache folder (``$XDG_CACHE_HOME``, ``~/.cache``).

    One place that the cohort tools write and every session reads, so that what was
    precomputed is found without anyone passing a path around. Files are keyed by the
    frame's content and the model's signature, so one folder serves any number of volumes
    and models; delete it to reclaim the space.
    """
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "napari-samed2" / "embeddings"


class EmbeddingCacheWarning(UserWarning):
    """The cache's folder failed; it goes on without it (memory, or re-encoding frames)."""


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class EmbeddingCache:
    """Per-frame backbone features (sam2's ``backbone_fpn`` list), by key."""

    def __init__(
        self,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        directory: str | Path | None = None,
        background_writes: bool | None = None,
        shared: str | Path | Sequence[str | Path] | None = None,
    ):
        """``background_writes``: None writes from a thread only features that are not on the CPU.
        ``shared``: folders read, never written or cleaned, for features this cache does not
        hold (embeddings precomputed by ``cohort embed``); a folder that does not exist is
        simply empty."""
        self.memory_bytes = memory_bytes
        if isinstance(shared, str | Path):
            shared = [shared]
        self.shared = tuple(Path(p).expanduser() for p in shared or ())
        self.background_writes = background_writes
        self.persistent = directory is not None
        self._tmp = (
            None if self.persistent
            else tempfile.TemporaryDirectory(prefix="samed2-embeddings-", ignore_cleanup_errors=True)
        )
        self.directory = Path(directory) if self.persistent else Path(self._tmp.name)
        self.write_error: str | None = None  # why writing to disk was switched off
        self._warned_unreadable = False
        self._memory: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._used = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samed2-embedding-writer")
        self._writing: OrderedDict[str, tuple[Future, list[torch.Tensor]]] = OrderedDict()
        self.stats = CacheStats()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._stop_writing(exc)

    def __contains__(self, key: str) -> bool:
        return key in self._memory or self._stored(key)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def _stored(self, key: str) -> bool:
        """On disk (in a shared folder too), or on its way there."""
        return key in self._writing or self._path(key).exists() or self._shared_path(key) is not None

    def _shared_path(self, key: str) -> Path | None:
        for folder in self.shared:
            path = folder / f"{key}.safetensors"
            if folder != self.directory and path.exists():
                return path
        return None

    def get(self, key: str, device: torch.device | str = "cpu") -> list[torch.Tensor] | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.stats.memory_hits += 1
            return self._memory[key]
        if key in self._writing:  # evicted a moment ago, still on its way to disk
            features = self._writing[key][1]
            self.stats.memory_hits += 1
            self._remember(key, features)
            return features
        features = self._read(key, device)
        if features is None:
            features = self._read_shared(key, device)
        if features is not None:
            self.stats.disk_hits += 1
            self._remember(key, features)
            return features
        self.stats.misses += 1
        return None

    def _read(self, key: str, device: torch.device | str) -> list[torch.Tensor] | None:
        """The features stored for ``key``, or None; a file that does not read back as
        features ``"0"``..``"n-1"`` is deleted (once warned about), so it is recomputed."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            return _load_features(path, device)
        except (*_DISK_ERRORS, ValueError) as exc:
            with contextlib.suppress(OSError):  # a read-only folder keeps it: read and refused again
                path.unlink()
            self._warn_unreadable(f"the embedding cache deleted {path.name} from {self.directory}, which does not "
                                  f"read back ({exc}), and recomputes it; other damaged files are replaced silently")
            return None

    def _read_shared(self, key: str, device: torch.device | str) -> list[torch.Tensor] | None:
        """The features for ``key`` in a shared folder, or None; a file there that does not
        read back is left alone (the folder is not this cache's) and the frame recomputed."""
        path = self._shared_path(key)
        if path is None:
            return None
        try:
            return _load_features(path, device)
        except (*_DISK_ERRORS, ValueError) as exc:
            self._warn_unreadable(f"the shared embedding file {path} does not read back ({exc}); its frame is "
                                  "recomputed. Run the cohort's embed command again to replace it.")
            return None

    def _warn_unreadable(self, message: str) -> None:
        if not self._warned_unreadable:
            self._warned_unreadable = True
            warnings.warn(message, EmbeddingCacheWarning, stacklevel=4)

    def put(self, key: str, features: list[torch.Tensor]) -> None:
        if self.persistent:
            self._write(key, features)
        self._remember(key, features)

    def _remember(self, key: str, features: list[torch.Tensor]) -> None:
        replaced = self._memory.pop(key, None)  # put again (e.g. a SAMed-2 partner slice): count it once
        if replaced is not None:
            self._used -= _nbytes(replaced)
        self._memory[key] = features
        self._used += _nbytes(features)
        while self._used > self.memory_bytes and len(self._memory) > 1:
            old_key, old = self._memory.popitem(last=False)
            self._used -= _nbytes(old)
            if not self._stored(old_key):
                self._write(old_key, old)

    def _write(self, key: str, features: list[torch.Tensor]) -> None:
        """Write ``features`` now, or queue them (a failure is seen on the next write or :meth:`flush`)."""
        if self.write_error is not None:
            return
        background = self.background_writes
        if background is None:
            background = features[0].device.type != "cpu"
        if not background:
            try:
                self._write_now(key, features)
            except _DISK_ERRORS as exc:
                self._stop_writing(exc)
            return
        self._writing[key] = (self._writer.submit(self._write_now, key, features), features)
        self._reap(block=len(self._writing) > MAX_WRITES_IN_FLIGHT)

    def _reap(self, block: bool = False) -> None:
        """Forget finished writes (a failed one switches writing off); with ``block``, wait for the oldest."""
        for key, (future, _) in list(self._writing.items()):
            if block or future.done():
                del self._writing[key]
                block = False
                try:
                    future.result()
                except _DISK_ERRORS as exc:
                    self._stop_writing(exc)

    def flush(self) -> None:
        """Wait until every queued write is on disk."""
        while self._writing:
            self._reap(block=True)

    def _write_now(self, key: str, features: list[torch.Tensor]) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        # a name of its own: processes embedding a cohort into one folder may write the same
        # key at once (identical slices), and must not write into each other's file
        partial = path.with_name(f"{key}.{uuid.uuid4().hex[:8]}.partial")
        try:
            save_file({str(i): f.detach().contiguous().cpu() for i, f in enumerate(features)}, str(partial))
            partial.replace(path)  # never leave a half-written file under a valid key
        finally:
            partial.unlink(missing_ok=True)

    def _stop_writing(self, exc: Exception) -> None:
        """Go on without writing to disk, after saying so once. Frames that are then evicted
        from memory are re-encoded when needed; files already on disk are still read."""
        if self.write_error is not None:
            return
        self.write_error = str(exc)
        warnings.warn(
            f"the embedding cache cannot write to {self.directory} ({exc}); it keeps embeddings in "
            "memory only from now on and re-encodes frames it has to drop. Free disk space or choose "
            "a folder you can write to for the next session.",
            EmbeddingCacheWarning,
            stacklevel=4,
        )

    @property
    def memory_used(self) -> int:
        return self._used

    def clear_memory(self) -> None:
        """Drop the in-memory part, spilling it to disk first (for a memory-pressure handler)."""
        for key, features in self._memory.items():
            if not self._stored(key):
                self._write(key, features)
        self.flush()
        self._memory.clear()
        self._used = 0

    def close(self) -> None:
        self.flush()
        self._writer.shutdown()
        self._memory.clear()
        self._used = 0
        if self._tmp is not None:
            self._tmp.cleanup()


def _load_features(path: Path, device: torch.device | str) -> list[torch.Tensor]:
    """Features ``"0"``..``"n-1"`` from a safetensors file (ValueError for any other content)."""
    from safetensors.torch import load_file

    stored = load_file(str(path), device=str(device))
    if not stored or set(stored) != {str(i) for i in range(len(stored))}:
        raise ValueError(f"it holds tensors {sorted(stored)}, not features 0..n-1")
    return [stored[str(i)] for i in range(len(stored))]


def _nbytes(features: list[torch.Tensor]) -> int:
    return sum(f.numel() * f.element_size() for f in features)
