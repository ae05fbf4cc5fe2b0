"""The plugin fits a 1366x768 laptop screen with every panel docked."""

from __future__ import annotations

import pytest

from napari_samed2.__main__ import PLUGIN, dock_all_widgets

pytestmark = pytest.mark.gui
SCREEN_HEIGHT = 768
TITLE_AND_TASKBAR = 70  # what a desktop keeps for itself


def _minimum_height(viewer) -> int:
    window = viewer.window._qt_window
    return max(window.minimumSizeHint().height(), window.minimumHeight())


def test_the_launchers_tabbed_panels_fit_a_laptop_screen(make_napari_viewer):
    viewer = make_napari_viewer()
    widgets = dock_all_widgets(viewer)
    assert list(widgets) == ["Model", "Segmentation", "Memory bank inspector"]
    assert _minimum_height(viewer) <= SCREEN_HEIGHT - TITLE_AND_TASKBAR


def test_panels_opened_one_by_one_from_the_menu_still_fit(make_napari_viewer):
    viewer = make_napari_viewer()
    for name in ("Model", "Segmentation", "Memory bank inspector"):
        viewer.window.add_plugin_dock_widget(PLUGIN, name)  # stacked, as the Plugins menu docks them
    assert _minimum_height(viewer) <= SCREEN_HEIGHT - TITLE_AND_TASKBAR
