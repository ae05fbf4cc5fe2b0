"""napari-samed2: SAM-2 / SAMed-2 segmentation and propagation for medical volumes and videos.

The package is usable without napari or Qt: ``load_model`` and the engine work headless.
"""

from napari_samed2.models import MODELS, LoadedModel, load_model

__version__ = "0.1.0.dev0"
__all__ = ["MODELS", "LoadedModel", "load_model", "__version__"]
