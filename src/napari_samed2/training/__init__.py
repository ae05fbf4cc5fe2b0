"""Fine-tuning SAM-2 family models on (image, label) volumes, and the demo model's synthetic data.

Clips of consecutive slices go through the engine's own tracking step
(:func:`napari_samed2.engine.step.track_step`) with gradients; see :mod:`.trainer`. Qt-free
and napari-free, like the engine.
"""

from napari_samed2.training.adapters import TRAINABLE, add_lora, parse_modules, select_trainable
from napari_samed2.training.clips import forward_clip
from napari_samed2.training.data import Clip, ClipSampler, VolumePair, load_pairs, make_pair
from napari_samed2.training.losses import LOSS_WEIGHTS
from napari_samed2.training.trainer import TrainConfig, Trainer, TrainProgress, train, validation_dice

__all__ = [
    "LOSS_WEIGHTS",
    "TRAINABLE",
    "Clip",
    "ClipSampler",
    "TrainConfig",
    "TrainProgress",
    "Trainer",
    "VolumePair",
    "add_lora",
    "forward_clip",
    "load_pairs",
    "make_pair",
    "parse_modules",
    "select_trainable",
    "train",
    "validation_dice",
]
