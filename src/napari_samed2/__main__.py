"""``python -m napari_samed2 [files...]``: napari with the plugin's panels docked.

With no file, it opens the plugin's synthetic sample volume, so a new user can try
everything with nothing downloaded. ``--screenshot PATH`` saves the window once it is shown
and exits (used for the docs and to check a fresh install end to end).
"""

from __future__ import annotations

import argparse

PLUGIN = "napari-samed2"


def dock_all_widgets(viewer) -> list[str]:
    """Dock every widget the plugin's manifest contributes; returns their names."""
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    names = [w.display_name for w in manifest.contributions.widgets or []]
    for name in names:
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_samed2", description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="NIfTI or TIFF volumes to open (default: the synthetic sample)")
    parser.add_argument("--screenshot", metavar="PATH", help="save a screenshot of the window and exit")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-samed2")
    if args.files:
        for path in args.files:
            viewer.open(path, plugin=PLUGIN)
    else:
        viewer.open_sample(PLUGIN, "synthetic_mr")
    dock_all_widgets(viewer)
    viewer.window._qt_window.resize(1500, 950)
    if args.screenshot:
        def capture() -> None:
            viewer.window._qt_window.grab().save(args.screenshot)
            viewer.close()

        QTimer.singleShot(1500, capture)
    napari.run()


if __name__ == "__main__":
    main()
