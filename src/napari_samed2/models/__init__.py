"""Model registry and loading: names to sam2 configs, checkpoints to ready modules."""

from napari_samed2.models.loading import (
    LoadedModel,
    build_model,
    fetch_weights,
    load_model,
    packaged_weights,
    ready_model,
    resolve_device,
)
from napari_samed2.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, Preprocessing, get_spec

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "LoadedModel",
    "ModelSpec",
    "Preprocessing",
    "build_model",
    "fetch_weights",
    "get_spec",
    "load_model",
    "packaged_weights",
    "ready_model",
    "resolve_device",
]
