"""Background encoding in the Segmentation panel: it starts with a segmentation, nearest to
the slice on screen, pauses for the panel's jobs, can be switched off, and stops with the viewer.

(tests/gui/conftest.py switches it off for every other GUI test; these switch it back on.)
"""

from __future__ import annotations

import os
import re
import sys
import threading

import numpy as np
import pytest

from napari_samed2._widgets import prefetch
from napari_samed2._widgets.prefetch import BackgroundEncoding
from napari_samed2._widgets.segmentation_panel import SegmentationPanel
from napari_samed2._widgets.state import shared_state
from napari_samed2.engine import Session

pytestmark = pytest.mark.gui
WAIT_MS = 120_000
FRAMES = 12


@pytest.fixture
def make_panel(make_napari_viewer, small_model, monkeypatch):
    """A panel with background encoding on, on a volume shown at slice 5 (not yet started)."""
    monkeypatch.setattr(BackgroundEncoding, "on_by_default", True)
    monkeypatch.setattr(prefetch, "QUIET_MS", 100)

    def make(frames: int = FRAMES) -> SegmentationPanel:
        viewer = make_napari_viewer()
        data = np.random.default_rng(0).normal(0.1, 0.02, (frames, 64, 64)).astype(np.float32)
        data[:, 20:40, 20:40] += 0.8
        viewer.add_image(data, name="mr")
        viewer.dims.set_current_step(0, 5)
        shared_state(viewer).set_model(small_model)
        panel = SegmentationPanel(viewer)
        viewer.window.add_dock_widget(panel)
        return panel

    return make


def _all_cached(session: Session) -> bool:
    return all(session.cache_key(f) in session.cache for f in range(len(session.volume)))


def test_a_new_segmentation_is_encoded_from_the_slice_on_screen_with_its_progress_shown(make_panel, qtbot):
    panel = make_panel()
    assert panel.encoding.check.isChecked() and panel.encoding.label.text() == ""
    assert panel.start()
    session = panel.session
    qtbot.waitUntil(lambda: session.frames_encoded >= 1, timeout=WAIT_MS)
    assert session.cache_key(5) in session.cache  # the slice on screen came first
    qtbot.waitUntil(lambda: bool(re.fullmatch(rf"Slices encoded: [1-9]\d*/{FRAMES}", panel.encoding.label.text())),
                    timeout=WAIT_MS)
    qtbot.waitUntil(lambda: panel.encoding.label.text() == f"All {FRAMES} slices encoded", timeout=WAIT_MS)
    assert _all_cached(session) and session.frames_encoded == FRAMES
    qtbot.waitUntil(lambda: not panel.encoding.running, timeout=WAIT_MS)


def test_a_propagation_pauses_it_and_it_resumes_after(make_panel, qtbot):
    panel = make_panel()
    assert panel.start()
    qtbot.waitUntil(lambda: panel.session.frames_encoded >= 1, timeout=WAIT_MS)
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        panel.points_layer.add([5, 30, 30])  # a click: encoding holds, the slice is segmented
    panel.propagate()
    encoded, labels = [], []
    panel._worker.yielded.connect(lambda _step: (encoded.append(panel.encoding._prefetcher.done),
                                                 labels.append(panel.encoding.label.text())))
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        pass
    assert len(encoded) == FRAMES + 1  # slice 5 is yielded going either way
    assert encoded[-1] - encoded[0] <= 1  # at most the slice it was encoding when paused
    assert labels[-1].endswith("(paused)")
    qtbot.waitUntil(lambda: panel.encoding.label.text() == f"All {FRAMES} slices encoded", timeout=WAIT_MS)
    assert _all_cached(panel.session)


def test_the_checkbox_switches_it_off_and_on(make_panel, qtbot):
    panel = make_panel()
    panel.encoding.check.setChecked(False)
    assert panel.start()
    qtbot.wait(500)
    assert panel.session.frames_encoded == 0 and not panel.encoding.running
    assert panel.encoding.label.text() == ""
    panel.encoding.check.setChecked(True)
    qtbot.waitUntil(lambda: panel.encoding.label.text() == f"All {FRAMES} slices encoded", timeout=WAIT_MS)
    assert _all_cached(panel.session)


def test_closing_the_viewer_while_it_runs_stops_it_first(make_panel, qtbot):
    panel = make_panel(frames=40)
    assert panel.start()
    session = panel.session
    qtbot.waitUntil(lambda: session.frames_encoded >= 2, timeout=WAIT_MS)
    workers = set(panel.encoding._workers)
    assert workers and any(w.is_running for w in workers)
    panel.viewer.close()
    assert not any(w.is_running for w in workers)  # its thread had ended when close() returned
    assert session.frames_encoded < 40


def test_an_error_stops_it_with_a_message_and_nothing_else(make_panel, qtbot, monkeypatch):
    def broken(self, frame):
        raise OSError("the embedding folder is gone")

    monkeypatch.setattr(Session, "prefetch", broken)
    panel = make_panel()
    assert panel.start()
    qtbot.waitUntil(lambda: "Background encoding stopped" in panel.encoding.label.text(), timeout=WAIT_MS)
    assert "the embedding folder is gone" in panel.encoding.label.text()
    qtbot.waitUntil(lambda: not panel.encoding.running, timeout=WAIT_MS)
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        panel.points_layer.add([5, 30, 30])
    assert panel.output_layer.data[5].any()  # segmenting works as before
    assert not panel.encoding.running  # and encoding did not start again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_the_worker_thread_gets_the_lowest_priority_and_no_other_thread_does():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    if before >= 19:
        pytest.skip("the tests run at nice 19 already: nothing to tell apart")
    seen = []

    def worker():
        prefetch._lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [19] and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_a_new_model_has_the_slices_encoded_again_with_it(make_panel, qtbot, tiny_checkpoint):
    from napari_samed2 import load_model
    from tests.conftest import TEST_DEVICE, TEST_IMAGE_SIZE

    panel = make_panel(frames=4)
    assert panel.start()
    first = panel.session
    qtbot.waitUntil(lambda: _all_cached(first), timeout=WAIT_MS)
    other = load_model(tiny_checkpoint, device=TEST_DEVICE, dtype="float32", image_size=TEST_IMAGE_SIZE // 2)
    panel.state.set_model(other)  # its features differ: the new session's slices are encoded afresh
    second = panel.session
    assert second is not first and second.model is other
    qtbot.waitUntil(lambda: _all_cached(second), timeout=WAIT_MS)
    assert second.frames_encoded >= 4
    qtbot.waitUntil(lambda: panel.encoding.label.text() == "All 4 slices encoded", timeout=WAIT_MS)


def test_on_a_cpu_every_job_pauses_it_and_on_cuda_propagations_do_not(make_panel, monkeypatch):
    panel = make_panel()
    assert panel.start()
    encoding = panel.encoding
    assert not encoding.on_cuda  # the tests run on a CPU
    assert not encoding.pauses_for([])
    assert all(encoding.pauses_for([job]) for job in ("segment", "mask prompt", "propagate", "re-propagate"))
    monkeypatch.setattr(BackgroundEncoding, "on_cuda", property(lambda self: True))  # a GPU, faked
    assert not any(encoding.pauses_for([job]) for job in ("propagate", "re-propagate", "full re-run"))
    assert encoding.pauses_for(["segment"]) and encoding.pauses_for(["propagate", "segment"])


def test_on_cuda_a_propagation_does_not_pause_it(make_panel, qtbot, monkeypatch):
    """The GPU faked by the rule's device check only: the engine still runs on the CPU."""
    monkeypatch.setattr(BackgroundEncoding, "on_cuda", property(lambda self: True))
    panel = make_panel(frames=32)
    assert panel.start()
    qtbot.waitUntil(lambda: panel.session.frames_encoded >= 1, timeout=WAIT_MS)
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        panel.points_layer.add([5, 30, 30])  # a click still pauses it
    qtbot.waitUntil(lambda: panel.encoding._worker is not None, timeout=WAIT_MS)  # the quiet time after it ended
    panel.propagate()
    labels = []
    panel._worker.yielded.connect(lambda _step: labels.append(panel.encoding.label.text()))
    with qtbot.waitSignal(panel.work_finished, timeout=WAIT_MS):
        pass
    assert re.fullmatch(r"Slices encoded: \d+/32", labels[0])  # it was encoding when the propagation began
    assert not any(text.endswith("(paused)") for text in labels)
    qtbot.waitUntil(lambda: panel.encoding.label.text() == "All 32 slices encoded", timeout=WAIT_MS)
    assert _all_cached(panel.session)
