"""Interactive evaluation: a simulated user clicks, the engine segments, metrics per click.

Qt-free and napari-free, like the engine it drives.
"""
