"""The headless engine: volumes, prompts, propagation and memory. No Qt, no napari."""

from napari_samed2.engine.converge import ConvergeStop
from napari_samed2.engine.embedding_cache import EmbeddingCache, EmbeddingCacheWarning
from napari_samed2.engine.memory import EntrySource, EntryStatus, MemoryEntry, StockPolicy
from napari_samed2.engine.prompts import FramePrompt
from napari_samed2.engine.results import FrameResult, ObjectResult
from napari_samed2.engine.session import Session
from napari_samed2.engine.volume import Volume

__all__ = [
    "ConvergeStop",
    "EmbeddingCache",
    "EmbeddingCacheWarning",
    "EntrySource",
    "EntryStatus",
    "FramePrompt",
    "FrameResult",
    "MemoryEntry",
    "ObjectResult",
    "Session",
    "StockPolicy",
    "Volume",
]
