"""Hydra configs of this package's own sam2 architectures (``pkg://napari_samed2.models.configs``)."""
