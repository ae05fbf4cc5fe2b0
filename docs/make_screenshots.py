"""Take the screenshots in docs/screenshots/ from a real napari window (run under Xvfb).

    xvfb-run -a .venv/bin/python docs/make_screenshots.py

The packaged demo model (nothing to download) segments the synthetic sample: one click on the
middle slice of the first organ, propagation both ways, a pinned and an evicted memory in the
inspector.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "screenshots"


def wait_until(condition, app, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() > deadline:
            raise TimeoutError("the panel did not finish in time")


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_samed2 import load_model
    from napari_samed2.__main__ import PLUGIN, bring_to_front, dock_all_widgets

    from napari_samed2._widgets.session_files import DATA_DIR_ENV

    OUT.mkdir(exist_ok=True)
    os.environ[DATA_DIR_ENV] = tempfile.mkdtemp()  # no autosave of an earlier run to offer, none left behind
    viewer = napari.Viewer(title="napari-samed2")
    viewer.window._qt_window.resize(1700, 1150)
    viewer.open_sample(PLUGIN, "synthetic_mr")
    widgets = dock_all_widgets(viewer)  # as the launcher docks them: tabs of one dock area
    model_panel, panel, inspector = widgets["Model"], widgets["Segmentation"], widgets["Memory bank inspector"]
    app = QApplication.instance()

    model_panel.device_choice.setCurrentText("cpu")
    model_panel._on_loaded(load_model("demo", device="cpu"))
    panel.image_choice.value = viewer.layers["synthetic MR"]
    panel.start()
    image = panel.state.image_layer
    frame = image.data.shape[0] // 2
    truth = viewer.layers["synthetic MR labels"]
    rows, cols = np.nonzero(np.asarray(truth.data[frame]) == 1)
    truth.visible = False
    panel.points_layer.add(panel.points_layer.world_to_data(image.data_to_world([frame, rows.mean(), cols.mean()])))
    wait_until(lambda: not panel.busy, app)
    panel.propagate()
    wait_until(lambda: not panel.busy, app)
    entries = [e for e in panel.session.memory_entries(1) if not e.conditioning]
    inspector.select_entry(1, min(entries, key=lambda e: e.confidence).frame)
    inspector.evict_selected()
    inspector.select_entry(1, entries[len(entries) // 3].frame)
    inspector.pin_selected()
    viewer.dims.set_point(0, image.data_to_world([frame, 0, 0])[0])
    bring_to_front(panel)  # the Segmentation tab in front: the panel of the main job
    for _ in range(50):
        app.processEvents()
        time.sleep(0.02)

    viewer.window._qt_window.grab().save(str(OUT / "main_window.png"))
    for widget, name in ((model_panel, "model_panel"), (panel, "segmentation_panel"), (inspector, "memory_inspector")):
        widget.grab().save(str(OUT / f"{name}.png"))
    print(f"wrote screenshots to {OUT}")
    viewer.close()


if __name__ == "__main__":
    main()
