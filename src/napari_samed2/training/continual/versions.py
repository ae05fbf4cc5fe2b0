"""Model versions in a folder: save, list, load, compare and roll back.

Each adaptation writes ``v<N>.safetensors`` (the changed tensors only, see
:mod:`napari_samed2.models.versions`, so a version of a 150 MB model is a few MB) and the
folder's ``current.json`` names the version in use. By default the folder sits beside the
base weights (``<base>.versions``), or in the user's cache folder when that place cannot be
written (weights shipped inside the package, the Hugging Face cache).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from napari_samed2.errors import CheckpointError, TrainingError
from napari_samed2.io._files import replacing
from napari_samed2.models.checkpoint import read_metadata
from napari_samed2.models.loading import PACKAGED_WEIGHTS_DIR, LoadedModel, load_model
from napari_samed2.models.versions import VERSION_FORMAT, weights_digest

CURRENT = "current.json"
BASE = "base"
_FILE = re.compile(r"^v(\d+)\.safetensors$")


@dataclass(frozen=True)
class ModelOrigin:
    """Where a loaded model's weights come from: its ``base`` file, the version it is (``None``:
    the base itself) and the tensors that version changed."""

    base: str
    base_name: str
    version: str | None
    changed: tuple[str, ...]


def model_origin(model: LoadedModel) -> ModelOrigin:
    if model.checkpoint is None:
        raise TrainingError(
            "this model was not loaded from a file, so a version cannot name its base weights: save it first "
            "(training.checkpoints.save_model) and load it with load_model(path)"
        )
    metadata = read_metadata(model.checkpoint)
    if metadata.get("format") == VERSION_FORMAT:
        from safetensors import safe_open

        with safe_open(str(model.checkpoint), framework="pt") as handle:
            changed = tuple(sorted(handle.keys()))
        return ModelOrigin(metadata["base"], metadata.get("base_name", ""), metadata["version"], changed)
    return ModelOrigin(str(model.checkpoint.resolve()), model.spec.name, None, ())


def default_versions_folder(model: LoadedModel) -> Path:
    """``<base>.versions`` beside the base weights, or a folder in the user's cache when the
    base lives where the user should not write (the package, the Hugging Face cache)."""
    from napari_samed2.engine.embedding_cache import default_cache_dir

    base = Path(model_origin(model).base)
    protected = PACKAGED_WEIGHTS_DIR in base.parents or "huggingface" in base.parts
    if not protected and os.access(base.parent, os.W_OK):
        return base.parent / f"{base.stem}.versions"
    return default_cache_dir().parent / "versions" / f"{model.spec.name}-{base.stem}"


@dataclass(frozen=True)
class VersionInfo:
    """One saved version, read from its file's metadata."""

    version: str
    path: Path
    parent: str | None
    base: str
    base_signature: str
    architecture: str
    image_size: int
    mode: str
    steps: int
    trained: str
    case: str
    case_key: str
    replayed: str
    created: str
    tensors: int
    input_smoothing: float = 0.0


@dataclass(frozen=True)
class VersionComparison:
    """Two versions side by side: each metadata field that differs, and how far apart their
    weights are (relative L2 distance of the tensors either one changed, 0 = identical)."""

    a: VersionInfo | None
    b: VersionInfo | None
    differences: tuple[tuple[str, str, str], ...]
    weight_distance: float


class ModelVersions:
    """The versions of one base model in ``folder``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()

    def list(self) -> list[VersionInfo]:
        """Every version, oldest first (a damaged file is left out, never deleted)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = _FILE.match(path.name)
            if match:
                try:
                    found.append((int(match.group(1)), self._info(path)))
                except CheckpointError:
                    continue
        return [info for _, info in sorted(found, key=lambda pair: pair[0])]

    def get(self, version: str) -> VersionInfo:
        for info in self.list():
            if info.version == version:
                return info
        names = [info.version for info in self.list()]
        raise CheckpointError(f"no version {version!r} in {self.folder}; its versions are {names or 'none yet'}")

    @staticmethod
    def _info(path: Path) -> VersionInfo:
        meta = read_metadata(path)
        if meta.get("format") != VERSION_FORMAT:
            raise CheckpointError(f"{path} is not a model version")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            count = len(list(handle.keys()))
        return VersionInfo(
            meta["version"], path, meta.get("parent") or None, meta["base"], meta.get("base_signature", ""),
            meta["architecture"], int(meta["image_size"]), meta.get("mode", ""), int(meta.get("steps", 0)),
            meta.get("trained", ""), meta.get("case", ""), meta.get("case_key", ""), meta.get("replayed", ""),
            meta.get("created", ""), count, float(meta.get("input_smoothing", 0.0)),
        )

    @property
    def current(self) -> str:
        """The version in use (:data:`BASE` when none was chosen yet)."""
        try:
            return json.loads((self.folder / CURRENT).read_text())["version"]
        except (OSError, ValueError, KeyError, TypeError):
            return BASE

    def _set_current(self, version: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with replacing(self.folder / CURRENT, overwrite=True) as partial:
            partial.write_text(json.dumps({"version": version}))

    def save(
        self, model: LoadedModel, tensors: dict[str, torch.Tensor], *, mode: str, steps: int, trained: str,
        case: str, case_key: str, replayed: str, input_smoothing: float = 0.0,
    ) -> VersionInfo:
        """Write ``tensors`` (the adapted model's changed tensors, sam2 names) as the next
        version of ``model``'s base, with ``model`` as its parent, and make it current."""
        from safetensors.torch import save_file

        origin = model_origin(model)
        state = model.sam.state_dict()
        base_digest = weights_digest(state, skip=tensors)
        others = [info for info in self.list() if info.base != origin.base]
        if others:
            raise TrainingError(
                f"{self.folder} holds versions of another base model ({others[0].base}): keep one versions folder per base"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        numbers = [int(m.group(1)) for p in self.folder.iterdir() if (m := _FILE.match(p.name))]
        number = 1 + max(numbers, default=0)
        metadata = {
            "format": VERSION_FORMAT, "version": f"v{number}", "parent": origin.version or "",
            "base": origin.base, "base_name": origin.base_name, "base_digest": base_digest,
            "base_signature": model.signature, "architecture": model.spec.name, "image_size": str(model.image_size),
            "mode": mode, "steps": str(steps), "trained": trained, "case": case, "case_key": case_key,
            "replayed": replayed, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "input_smoothing": f"{input_smoothing:g}",
        }
        path = self.folder / f"v{number:04d}.safetensors"
        cpu = {k: v.detach().to("cpu", torch.float32, copy=True).contiguous() for k, v in tensors.items()}
        with replacing(path, overwrite=False) as partial:
            save_file(cpu, str(partial), metadata=metadata)
        self._set_current(f"v{number}")
        return self._info(path)

    def load(self, version: str = BASE, *, device="auto", dtype="auto") -> LoadedModel:
        """A version's model (``"base"``: the base weights all versions here start from)."""
        if version == BASE:
            versions = self.list()
            if not versions:
                raise CheckpointError(f"{self.folder} has no versions, so it does not know its base: load the base directly")
            return load_model(versions[0].base, architecture=versions[0].architecture, device=device, dtype=dtype,
                              image_size=versions[0].image_size)
        return load_model(self.get(version).path, device=device, dtype=dtype)

    def rollback(self, version: str = BASE, *, device="auto", dtype="auto") -> LoadedModel:
        """Make ``version`` (an earlier one, or ``"base"``) current and return its model: the
        exact weights it had. Later versions stay on disk, so this can be undone."""
        model = self.load(version, device=device, dtype=dtype)
        self._set_current(version)
        return model

    def compare(self, a: str, b: str) -> VersionComparison:
        """Metadata differences and weight distance between versions ``a`` and ``b`` (``"base"`` allowed)."""
        from safetensors.torch import load_file

        infos = [None if v == BASE else self.get(v) for v in (a, b)]
        names = [f.name for f in fields(VersionInfo) if f.name not in ("path", "created")]
        differences = tuple(
            (name, str(getattr(infos[0], name, "")), str(getattr(infos[1], name, "")))
            for name in names
            if infos[0] is None or infos[1] is None or getattr(infos[0], name) != getattr(infos[1], name)
        )
        tensors = [{} if info is None else load_file(str(info.path)) for info in infos]
        keys = sorted(set(tensors[0]) | set(tensors[1]))
        if not keys:
            return VersionComparison(infos[0], infos[1], differences, 0.0)
        base = self.load(BASE, device="cpu").sam.state_dict()
        pick = [[t.get(k, base[k]).float() for k in keys] for t in tensors]
        distance = sum(float((x - y).pow(2).sum()) for x, y in zip(*pick)) ** 0.5
        scale = sum(float(base[k].float().pow(2).sum()) for k in keys) ** 0.5
        return VersionComparison(infos[0], infos[1], differences, distance / max(scale, 1e-12))
