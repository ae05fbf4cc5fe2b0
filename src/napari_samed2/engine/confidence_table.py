"""The per-slice confidence table (what the inspector lists) as a CSV file, for review
outside napari: which slices of which objects the model was unsure of."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from napari_samed2.engine.memory import MemoryEntry
from napari_samed2.io._files import replacing

COLUMNS = ("object", "slice", "confidence", "status", "prompted", "source", "predicted_iou", "object_score")


def confidence_table(entries: Iterable[MemoryEntry]) -> pd.DataFrame:
    """One row per memory entry; library entries keep their negative frame numbers
    (``-1 - library index``), as :meth:`Session.memory_entries` lists them."""
    rows = [
        (e.object_id, e.frame, e.confidence, e.status.value, e.conditioning, e.source.value, e.predicted_iou, e.object_score)
        for e in entries
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_confidence_csv(entries: Iterable[MemoryEntry], path: str | Path, *, overwrite: bool = False) -> Path:
    """Write :func:`confidence_table` to ``path`` (whole or not at all, see ``io.replacing``)."""
    path = Path(path).expanduser()
    table = confidence_table(entries)
    with replacing(path, overwrite=overwrite) as temporary:
        table.to_csv(temporary, index=False, float_format="%.6g")
    return path
