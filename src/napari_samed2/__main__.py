"""``python -m napari_samed2 [files...]``: napari with the plugin's panels docked.

With no file, it opens the plugin's synthetic sample volume and, when the demo model's
weights ship with the package, loads that model and starts a segmentation of the volume, so a
new user gets real masks from the first click with nothing downloaded (``--model NAME`` loads
another, ``--model none`` none). ``--screenshot PATH`` saves the window once it is shown and
exits (used for the docs and to check a fresh install end to end).
"""

from __future__ import annotations

import argparse

PLUGIN = "napari-samed2"


def dock_all_widgets(viewer) -> dict:
    """Dock every widget the plugin's manifest contributes, as tabs of one dock area (so the
    window fits a laptop screen), the first one in front; returns them by name."""
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    names = [w.display_name for w in manifest.contributions.widgets or []]
    docks = {name: viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True) for name in names}
    if docks:  # napari shows the last tab added; bring the first to the front once it is laid out
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, docks[names[0]][0].raise_)
    return {name: widget for name, (_dock, widget) in docks.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_samed2", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="NIfTI or TIFF volumes to open (default: the synthetic sample)")
    parser.add_argument("--screenshot", metavar="PATH", help="save a screenshot of the window and exit")
    parser.add_argument(
        "--model", default=None,
        help="registry model to load at start (default: the demo model when its weights ship; 'none': none)",
    )
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-samed2")
    if args.files:
        for path in args.files:
            viewer.open(path, plugin=PLUGIN)
    else:
        viewer.open_sample(PLUGIN, "synthetic_mr")
    widgets = dock_all_widgets(viewer)
    segment_once_loaded(widgets)
    start_model(widgets, args.model)
    viewer.window._qt_window.resize(1500, 950)
    if args.screenshot:
        def capture() -> None:
            viewer.window._qt_window.grab().save(args.screenshot)
            viewer.close()

        QTimer.singleShot(1500, capture)
    napari.run()


def start_model(widgets: dict, name: str | None) -> None:
    """Load ``name`` (default: a model whose weights ship, if any) in the Model panel."""
    from napari_samed2._widgets.model_panel import ModelPanel
    from napari_samed2.models import MODELS, packaged_weights, ready_model

    if name is None:
        name = ready_model()
        if packaged_weights(MODELS[name]) is None:
            return  # nothing to load without a download: the user chooses
    if name == "none":
        return
    panel = next(w for w in widgets.values() if isinstance(w, ModelPanel))
    panel.choose(name)
    panel.load()


def segment_once_loaded(widgets: dict) -> None:
    """When the first model has loaded, start a segmentation of the chosen image with the
    Segmentation tab in front, so that the user's first click on the volume segments."""
    from napari_samed2._widgets.model_panel import ModelPanel
    from napari_samed2._widgets.segmentation_panel import SegmentationPanel

    models = next(w for w in widgets.values() if isinstance(w, ModelPanel))
    segmentation = next(w for w in widgets.values() if isinstance(w, SegmentationPanel))

    def loaded(model) -> None:
        if model is None:
            return
        models.model_changed.disconnect(loaded)
        if segmentation.session is None and segmentation.start():
            bring_to_front(segmentation)

    models.model_changed.connect(loaded)


def bring_to_front(widget) -> None:
    """Raise the dock holding ``widget``: its tab comes to the front of a tabbed dock area."""
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    if dock is not None:
        dock.raise_()


if __name__ == "__main__":
    main()
