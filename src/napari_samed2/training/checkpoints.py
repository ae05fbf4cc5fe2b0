"""Training checkpoints: the model for ``load_model``, and a separate state to resume from.

* ``model.safetensors`` (and ``best.safetensors``): every weight of the fine-tuned model,
  LoRA folded in, under sam2's key names, with the architecture, image size, what trained
  and the training settings in the file's metadata. ``load_model(path)`` reads it directly.
* ``resume.safetensors`` + ``resume.json``: what only training needs to continue, the
  trainable parameters under their training names (LoRA factors included), the optimiser's
  moments, the step, and the random states. Nothing is pickled.

Every file is written to a temporary name in the same folder, then moved into place with
``os.replace``, so an interrupted save never leaves a half-written file under the real name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from napari_samed2.errors import CheckpointError
from napari_samed2.io._files import replacing
from napari_samed2.training.adapters import check_frozen, merged_state_dict

FORMAT = "napari-samed2/training"
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
RESUME_TENSORS = "resume.safetensors"
RESUME_STATE = "resume.json"
LOG_FILE = "log.csv"


def _replace_into(path: Path, write) -> Path:
    """``write`` a temporary sibling of ``path``, then move it into place (io's ``replacing``)."""
    with replacing(path, overwrite=True) as partial:
        write(partial)
    return path


def save_model(
    path: str | Path,
    sam: torch.nn.Module,
    trainable: list[str],
    *,
    architecture: str,
    image_size: int,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the whole model (LoRA merged) with its metadata; checks first that exactly the
    ``trainable`` parameters were unfrozen (sam2's check before saving)."""
    from safetensors.torch import save_file

    check_frozen(sam, trainable)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in merged_state_dict(sam).items()}
    info = {"format": FORMAT, "architecture": architecture, "image_size": str(int(image_size))}
    info.update({k: str(v) for k, v in (metadata or {}).items()})
    return _replace_into(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=info))


def export_weights(source: str | Path, destination: str | Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """A trained checkpoint as a compact file to ship or share: floating tensors in ``dtype``
    (half the size of float32; ``load_model`` loads them into the float32 model), the
    training metadata kept. This is how the demo model's packaged weights are made."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {
            k: (t.to(dtype) if t.is_floating_point() else t).contiguous()
            for k in handle.keys()
            for t in [handle.get_tensor(k)]
        }
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a training checkpoint of napari-samed2 (no training metadata)")
    metadata["exported_dtype"] = str(dtype).removeprefix("torch.")
    return _replace_into(Path(destination), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


@dataclass
class ResumeState:
    """What :func:`load_resume` found: the step to continue after, the saved settings, the
    data sampler's random state and torch's."""

    step: int
    config: dict
    numpy_rng: dict
    best_dice: float | None


def save_resume(
    folder: str | Path,
    sam: torch.nn.Module,
    trainable: list[str],
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    config: dict,
    numpy_rng: dict,
    torch_rng: torch.Tensor | None = None,
    best_dice: float | None = None,
) -> Path:
    """Write ``resume.safetensors`` and ``resume.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    parameters = dict(sam.named_parameters())
    tensors = {f"param.{name}": parameters[name].detach().to("cpu", copy=True).contiguous() for name in trainable}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous().reshape(value.shape)
    tensors["torch_rng"] = torch.get_rng_state() if torch_rng is None else torch_rng
    groups = [{k: v for k, v in group.items()} for group in optimizer_state["param_groups"]]
    state = {
        "format": FORMAT,
        "step": int(step),
        "trainable": list(trainable),
        "param_groups": groups,
        "config": config,
        "numpy_rng": numpy_rng,
        "best_dice": best_dice,
    }
    _replace_into(folder / RESUME_TENSORS, lambda tmp: save_file(tensors, str(tmp)))
    _replace_into(folder / RESUME_STATE, lambda tmp: tmp.write_text(json.dumps(state, indent=1)))
    return folder


def load_resume(
    source: str | Path, sam: torch.nn.Module, trainable: list[str], optimizer: torch.optim.Optimizer
) -> ResumeState:
    """Restore trainable parameters and optimiser state saved by :func:`save_resume`.

    ``source`` is the output folder of the earlier run (or its ``resume.json``). The model
    must be set up to train the same parameters; otherwise the error says what differs.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    source = Path(source).expanduser()
    folder = source if source.is_dir() else source.parent
    json_path, tensor_path = folder / RESUME_STATE, folder / RESUME_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(
            f"no resume state in {str(folder)!r} (expected {RESUME_STATE} and {RESUME_TENSORS}): pass the output "
            "folder of the run to continue (--resume OUT), or start without --resume"
        )
    try:
        state = json.loads(json_path.read_text())
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"the resume state in {str(folder)!r} does not load ({exc}); it may be truncated. Start again "
            "from the last model checkpoint instead: --model OUT/model.safetensors without --resume"
        ) from exc
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a napari-samed2 resume state")
    if state["trainable"] != list(trainable):
        raise CheckpointError(
            f"the resume state in {str(folder)!r} trained {len(state['trainable'])} parameters, this run "
            f"trains {len(trainable)}: resume with the same --train modules, model and LoRA rank "
            f"({state['config'].get('train')})"
        )
    parameters = dict(sam.named_parameters())
    with torch.no_grad():
        for name in trainable:
            parameters[name].copy_(tensors[f"param.{name}"])
    optimizer_state = {"state": {}, "param_groups": state["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            optimizer_state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(tensors["torch_rng"])
    return ResumeState(int(state["step"]), state["config"], state["numpy_rng"], state.get("best_dice"))
