"""Reading checkpoint files and checking them against an architecture before loading.

sam2's own loader logs the key lists and raises a bare ``RuntimeError``; users of a GUI need
to know *which* file is wrong, *how*, and which model it probably is instead.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_samed2.errors import CheckpointError, CheckpointMismatchError
from napari_samed2.models.registry import MODELS, ModelSpec

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
_STATE_DICT_KEYS = ("model", "state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pt``/``.pth`` (with or without a ``model`` key) or safetensors.

    Pickles are read with ``weights_only=True``: a file that needs arbitrary Python objects
    is refused rather than executed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint file {str(path)!r} does not exist. Check the path, or pass a model "
            f"name ({', '.join(MODELS)}) to download published weights."
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path.name} is not a readable safetensors file ({exc}). The file may be "
                "truncated: download it again."
            ) from exc
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): the download or copy did not finish; fetch it again.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not code, just bytes that are no checkpoint
            raise CheckpointError(
                f"{path.name} is not a readable PyTorch checkpoint (it does not unpickle). "
                "The file may be truncated or corrupted, or not a checkpoint: download it again."
            ) from exc
        raise CheckpointError(
            f"{path.name} holds Python objects beyond tensors, which are not loaded for safety "
            f"({_first_line(exc)}). Re-save it as a plain state dict: "
            "torch.save({'model': model.state_dict()}, path)."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path.name} is not a readable PyTorch checkpoint ({_first_line(exc)}). "
            "The file may be truncated or corrupted: download it again."
        ) from exc
    return _state_dict_from(obj, path)


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).splitlines()), "") or type(exc).__name__


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a ``.safetensors`` file (string keys and values; empty for other
    files or when there is none). Training checkpoints name their architecture and image size
    here (``"architecture"``, ``"image_size"``), so they load without guessing."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path.name} is not a readable safetensors file ({exc}). The file may be truncated: "
            "download or export it again."
        ) from exc


def _state_dict_from(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path.name} does not contain a state dict (a mapping of tensors).")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(obj):
        raise CheckpointError(
            f"{path.name} mixes tensors with other values at the top level; expected a state "
            f"dict, optionally under one of the keys {_STATE_DICT_KEYS}."
        )
    return tensors


@dataclass(frozen=True)
class StateDictDiff:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "key: checkpoint shape vs model shape"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def diff_state_dict(
    expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], ignored: tuple[str, ...] = ()
) -> StateDictDiff:
    def keep(key: str) -> bool:
        return not any(pattern in key for pattern in ignored)

    missing = sorted(k for k in expected if k not in got)
    unexpected = sorted(k for k in got if k not in expected and keep(k))
    mismatched = sorted(
        f"{k}: {tuple(got[k].shape)} in the file vs {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in got and got[k].shape != v.shape
    )
    return StateDictDiff(missing, unexpected, mismatched)


def describe_mismatch(path: Path | str, spec: ModelSpec, diff: StateDictDiff, guess: str | None) -> str:
    def first(items: list[str], n: int = 4) -> str:
        more = f", ... ({len(items) - n} more)" if len(items) > n else ""
        return ", ".join(items[:n]) + more

    parts = [f"{Path(path).name} does not fit {spec.title} ({spec.name}):"]
    if diff.missing:
        parts.append(f"{len(diff.missing)} missing keys ({first(diff.missing)})")
    if diff.unexpected:
        parts.append(f"{len(diff.unexpected)} unexpected keys ({first(diff.unexpected)})")
    if diff.mismatched:
        parts.append(f"{len(diff.mismatched)} shape mismatches ({first(diff.mismatched, 2)})")
    if guess and guess != spec.name:
        parts.append(f"It looks like a {guess!r} checkpoint: pass architecture={guess!r}.")
    else:
        parts.append("Choose the model the checkpoint was trained as (architecture=...).")
    return " ".join(parts)


def guess_architecture(state_dict: dict[str, torch.Tensor], filename: str = "") -> str | None:
    """Name the registry entry a state dict most likely belongs to, from its keys and shapes.

    Hiera sizes differ in embedding width and block count (the demo model's trunk is 32 wide
    with 6 blocks); SAM 2.1 added ``no_obj_embed_spatial``; SAMed-2 adds adapter keys.
    MedSAM2 has SAM 2.1 tiny's keys, so it is told apart by its file name only.
    """
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    blocks = {
        int(m.group(1))
        for k in state_dict
        if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))
    }
    if (patch.shape[0], len(blocks)) == (32, 6) and not any(".adapter." in k for k in state_dict):
        return "demo"
    size = {
        (96, 12): "tiny",
        (96, 16): "small",
        (112, 24): "base-plus",
        (144, 48): "large",
    }.get((patch.shape[0], len(blocks)))
    if size is None:
        return None
    if any(".adapter." in k for k in state_dict):
        return "samed2" if size == "small" else None
    generation = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2"
    if generation == "sam2.1" and size == "tiny" and "medsam" in filename.lower():
        return "medsam2"
    return f"{generation}-{size}"
