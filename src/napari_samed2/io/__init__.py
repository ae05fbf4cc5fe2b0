"""Reading and writing medical images, intensity windows and a synthetic sample volume.

Qt-free and napari-free: readers return npe2 ``LayerData`` tuples ``(data, kwargs, type)``.
"""

from napari_samed2.io.arrays import LayerData, as_label_array, label_dtype, looks_like_labels, require_volume
from napari_samed2.io.intensity import CT_PRESETS, WINDOW_CHOICES, IntensityWindow, as_window, chosen_window
from napari_samed2.io.nifti import NiftiGeometry, read_nifti, write_nifti_labels
from napari_samed2.io.readers import get_reader, read_image
from napari_samed2.io.sample import SyntheticVolume, synthetic_volume
from napari_samed2.io.tiff import read_tiff, write_tiff_labels
from napari_samed2.io.writers import labels_metadata, write_labels

__all__ = [
    "CT_PRESETS",
    "WINDOW_CHOICES",
    "IntensityWindow",
    "LayerData",
    "NiftiGeometry",
    "SyntheticVolume",
    "as_label_array",
    "as_window",
    "chosen_window",
    "get_reader",
    "label_dtype",
    "labels_metadata",
    "looks_like_labels",
    "read_image",
    "read_nifti",
    "read_tiff",
    "require_volume",
    "synthetic_volume",
    "write_labels",
    "write_nifti_labels",
    "write_tiff_labels",
]
