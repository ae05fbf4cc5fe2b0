"""Model versions: a base model plus the tensors one continual adaptation changed.

A version file (``.safetensors``) holds only the tensors that differ from its base (LoRA
already merged, under sam2's key names), and in its metadata where the base comes from
(``base``: its file, ``architecture``, ``image_size``), a digest of the base's other tensors,
its parent version and what made it (see :mod:`napari_samed2.training.continual`).
``load_model(version file)`` loads the base, checks the digest and puts the tensors in: the
very weights the adaptation produced. The file is the version's identity, so
``LoadedModel.signature`` changes with it; a version that changed no image-encoder tensor
keeps its base's ``feature_signature``, so the embedding cache serves it the base's features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

from napari_samed2.errors import CheckpointError, CheckpointMismatchError, ModelSettingsError

VERSION_FORMAT = "napari-samed2/version"


def weights_digest(state: Mapping[str, torch.Tensor], skip: Collection[str] = ()) -> str:
    """A digest of every tensor of ``state`` but ``skip`` (names, dtypes, shapes, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(state):
        if key in skip:
            continue
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def leaves_encoder(changed: Collection[str]) -> bool:
    """True when none of the ``changed`` tensor names is the image encoder's: the version's
    image features are its base's, so it can share the base's cached embeddings."""
    return not any(key.startswith("image_encoder.") for key in changed)


def load_version(
    path: Path,
    metadata: Mapping[str, str],
    *,
    device="auto",
    dtype="auto",
    image_size: int | None = None,
    cache_dir=None,
):
    """The model a version file describes (called by ``load_model``)."""
    from safetensors.torch import load_file

    from napari_samed2.models.loading import LoadedModel, load_model

    size = int(metadata["image_size"])
    if image_size is not None and image_size != size:
        raise ModelSettingsError(
            f"{path.name} is a version of a model at {size} px; load it without image_size (or with {size})"
        )
    from napari_samed2.models.loading import resolve_device, resolve_dtype

    torch_device = resolve_device(device)
    dtype = resolve_dtype(dtype, torch_device)  # "auto" as on the device the version will run on
    base_source = metadata["base"]
    if not Path(base_source).exists() and metadata.get("base_name"):
        base_source = metadata["base_name"]  # a registry model's weights, found again by name
    try:
        base = load_model(base_source, architecture=metadata["architecture"], device="cpu", dtype=dtype,
                          image_size=size, cache_dir=cache_dir)
    except CheckpointError as exc:
        raise CheckpointError(f"{path.name} is a version of {metadata['base']}, which does not load: {exc}") from exc
    try:
        delta = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{path.name} cannot be read ({exc}); it may be truncated. Roll back to another version.") from exc
    state = base.sam.state_dict()
    wrong = [k for k, v in delta.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointMismatchError(f"{path.name} has tensors its base model lacks or shapes it differs in (first: {wrong[:3]})")
    if weights_digest(state, skip=delta) != metadata["base_digest"]:
        raise CheckpointError(
            f"{path.name} was made from other base weights than those now in {metadata['base']}: the base file "
            "changed since. Put the original base weights back, or load the base model itself."
        )
    with torch.no_grad():
        for key, value in delta.items():
            state[key].copy_(value)
    base.sam.to(torch_device)
    smoothing = _smoothing(path, metadata)
    same_input = leaves_encoder(delta) and smoothing == base.input_smoothing
    return LoadedModel(base.spec, base.sam, torch_device, base.dtype, path,
                       shares_features_with=base.feature_signature if same_input else None, input_smoothing=smoothing)


def _smoothing(path: Path, metadata: Mapping[str, str]) -> float:
    """The version's input smoothing (0 for versions saved before it existed)."""
    try:
        value = float(metadata.get("input_smoothing", 0.0))
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise CheckpointError(f"{path.name} has input_smoothing {metadata.get('input_smoothing')!r}, not a number >= 0: the file is damaged")
    return value
