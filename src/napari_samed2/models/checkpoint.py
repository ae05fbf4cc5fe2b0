"""Reading checkpoint files and checking them against an architecture before loading.

sam2's own loader logs the key lists and raises a bare ``RuntimeError``; users of a GUI need
to know *which* file is wrong, *how*, and which model it probably is instead.
"""

from __future__ import annotations

import io
import itertools
import pickle
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_samed2.errors import CheckpointError
from napari_samed2.models.registry import MODELS, ModelSpec

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
_STATE_DICT_KEYS = ("model", "state_dict")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pt``/``.pth`` (with or without a ``model`` key) or safetensors.

    Pickles are read with ``weights_only=True``: a file that needs arbitrary Python objects
    is refused rather than executed.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a folder, not a checkpoint file: pass the .pt, .pth or .safetensors file in it")
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint file {str(path)!r} does not exist. Check the path, or pass a model "
            f"name ({', '.join(MODELS)}) to download published weights."
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path.name} is not a readable safetensors file ({exc}). The file may be "
                "truncated: download it again."
            ) from exc
        if not state:
            raise CheckpointError(f"{path.name} holds no tensors, so no weights: export or download the model again.")
        return state
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): the download or copy did not finish; fetch it again.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # on bytes it cannot parse torch.load raises anything (KeyError: 101 for text)
        refusal = explain_refusal(path, exc)
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {refusal.reason}. {refusal.advice}") from exc
    return _state_dict_from(obj, path)


@dataclass(frozen=True)
class Refusal:
    """Why ``torch.load(weights_only=True)`` did not load a file, and what to do about it."""

    reason: str
    advice: str


# What torch's weights-only unpickler imports for plain tensors and containers.
_TENSOR_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "builtins.frozenset")
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_LEGACY_TORCH_HEAD = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)  # torch.save before zip files


def explain_refusal(path: Path, exc: BaseException) -> Refusal:
    """Tell, from the file's bytes (its pickle opcodes are parsed, never run), whether it holds
    code that was refused, is text or a Git LFS pointer, a damaged torch.save file, or a pickle
    torch.save did not write: torch's own message names an opcode or a key instead."""
    with open(path, "rb") as stream:
        head = stream.read(64)
    if head.startswith(_LFS_POINTER):
        return Refusal("it is a Git LFS pointer, not the file itself", "Fetch the file: git lfs pull.")
    imports = _pickled_imports(path)
    refused = [name for name in imports or () if not name.startswith(_TENSOR_GLOBALS)]
    if refused:  # first: a protocol-0 pickle is printable text too
        return Refusal(
            f"it holds pickled Python code or objects beyond tensors ({', '.join(list(dict.fromkeys(refused))[:3])}), "
            "which were refused, not run: files are read with torch.load(weights_only=True), which loads tensors only",
            "If you trust the file's source, re-save it as a plain state dict: "
            "torch.save({'model': model.state_dict()}, path).",
        )
    if _is_text(head):
        first_line = head.decode(errors="replace").splitlines()[0][:40]
        return Refusal(
            f"it is a text file (it starts {first_line!r}), perhaps an error page saved in place of the weights",
            "Download the file again.",
        )
    if imports is not None and not (zipfile.is_zipfile(path) or head.startswith(_LEGACY_TORCH_HEAD)):
        return Refusal(
            "it is a Python pickle that torch.save did not write", "Save the weights with torch.save(state_dict, path)."
        )
    return Refusal("the file is truncated or corrupted", "Download or copy it again.")


def _pickled_imports(path: Path) -> list[str] | None:
    """The ``module.name`` globals the file's pickles import (in a zip archive, those of its
    ``data.pkl``), or None if the file does not start with a whole pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                return _imports_of(io.BytesIO(archive.read(name)))
        with open(path, "rb") as stream:
            return _imports_of(stream)
    except Exception:  # a damaged archive, no data.pkl, or not a pickle: nothing to tell from it
        return None


def _imports_of(stream) -> list[str]:
    """Globals imported by the pickles at the start of ``stream`` (a legacy torch file holds
    several in a row, then raw tensor bytes). Raises if the first one is not whole."""
    imports: list[str] = []
    for number in itertools.count():
        if not stream.read(1):
            if number == 0:
                raise ValueError("no pickle")
            break
        stream.seek(-1, io.SEEK_CUR)
        try:
            imports += _globals_in_one_pickle(stream)
        except Exception:
            if number == 0:
                raise
            break
    return imports


def _globals_in_one_pickle(stream) -> list[str]:
    found, memo, strings = [], {}, []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "INST"):
            found.append(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            found.append(".".join(str(s) for s in strings[-2:]))
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = strings[-1] if strings else None
        elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
            strings.append(memo.get(arg))
        elif isinstance(arg, str):
            strings.append(arg)
    return found


def _is_text(head: bytes) -> bool:
    """No control characters but tabs and line breaks: binary formats all have some early on."""
    return bool(head.strip()) and all(byte >= 0x20 and byte != 0x7F or byte in b"\t\n\r" for byte in head)


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
    if isinstance(obj, dict) and not obj:
        raise CheckpointError(f"{path.name} holds an empty state dict, so no weights: save the model again.")
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path.name} does not contain a state dict (a mapping of tensors) but a {type(obj).__name__}: "
            "save one with torch.save({'model': model.state_dict()}, path)."
        )
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
