"""A saved folder: a JSON document beside a safetensors file, as Session and MemoryLibrary save.

Both files are written to temporary names and moved into place only once both are complete,
the JSON last, so a save that fails (read-only folder, full disk) leaves the earlier save as
it was. Reading turns a missing, truncated or inconsistent pair into one SavedStateError that
names the folder, instead of safetensors', json's or a KeyError's own message.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError

from napari_samed2.errors import OutputFolderError, SavedStateError
from napari_samed2.io._files import replacing


def write_pair(folder: str | Path, json_name: str, document: dict, tensors_name: str, tensors: dict) -> Path:
    from safetensors.torch import save

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(
            f"cannot create the folder {folder} ({exc.strerror or exc}): save to a folder you can write to"
        ) from exc
    # the tensors move into place first and the JSON last, each only once both are written
    with replacing(folder / json_name, overwrite=True) as json_partial:
        json_partial.write_text(json.dumps(document, indent=1))
        with replacing(folder / tensors_name, overwrite=True) as tensors_partial:
            tensors_partial.write_bytes(save(tensors))
    return folder


def read_pair(
    folder: str | Path, json_name: str, tensors_name: str, what: str, fields: tuple[str, ...]
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON document (with ``fields`` present) and the tensors of a saved ``what``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in (json_name, tensors_name) if not (folder / name).is_file()]
    if missing:
        raise SavedStateError(
            f"{folder} is not a saved {what}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"missing. Choose the folder the {what} was saved to."
        )
    try:
        document = json.loads((folder / json_name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(folder / json_name, what, exc) from exc
    absent = [name for name in fields if name not in document] if isinstance(document, dict) else list(fields)
    if absent:
        raise _damaged(folder / json_name, what, f"no {', '.join(absent)}")
    try:
        tensors = load_file(str(folder / tensors_name))
    except (OSError, SafetensorError) as exc:
        raise _damaged(folder / tensors_name, what, exc) from exc
    return document, tensors


@contextlib.contextmanager
def consistent(folder: str | Path, what: str) -> Iterator[None]:
    """Rebuilding from a saved pair: a missing tensor or field, or a value of the wrong kind,
    means the two files are not one save (or were edited)."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise SavedStateError(
            f"the saved {what} in {folder} is inconsistent ({type(exc).__name__}: {exc}): its two files are not "
            "from the same save, or were edited. Save it again, or restore a backup of the folder."
        ) from exc


def _damaged(path: Path, what: str, reason) -> SavedStateError:
    return SavedStateError(
        f"{path} cannot be read ({reason}): the file is truncated or was edited, so the saved {what} in "
        f"{path.parent} cannot be loaded. Save it again, or restore a backup of the folder."
    )
