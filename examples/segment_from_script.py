"""Segment a volume from a Python script, with the engine the plugin's widgets use.

    python examples/segment_from_script.py                        # SAM 2.1 tiny (downloaded once)
    python examples/segment_from_script.py --checkpoint my.pt     # a local checkpoint
    python examples/segment_from_script.py --random-weights       # no download: random weights, to try the flow

It opens ``napari.Viewer()``, adds the plugin's synthetic MR volume, clicks once in the middle
of an organ (where a user would, here taken from the volume's ground truth), propagates
through every slice in both directions in a background worker and shows each slice as it
arrives, as the Segmentation panel does:
``Session`` holds the model state and prompts, ``LabelVolume`` writes results into the Labels
layer with undo. Everything here also runs headless: drop the viewer and use ``session.labels()``.
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_samed2 import load_model
from napari_samed2.engine import FramePrompt, Session
from napari_samed2.engine.labels import LabelVolume
from napari_samed2.io.sample import synthetic_volume


def segment_in_viewer(viewer, model, volume: np.ndarray, frame: int, click: tuple[float, float], spacing=(1, 1, 1)):
    """One positive click on ``frame`` at ``click`` (row, column), propagated both ways in a
    napari worker, so the window stays responsive and shows each slice as it arrives (with a
    progress bar in napari's activity dock). Returns the session, the Labels layer and the
    worker: connect to ``worker.finished``, or call ``worker.quit()`` to stop after the
    current slice (what was done stays)."""
    from napari.qt.threading import thread_worker

    image = viewer.add_image(volume, name="volume", scale=spacing)
    session = Session(model, image.data)
    object_id = session.add_object()
    labels_layer = viewer.add_labels(np.zeros(volume.shape, np.uint16), name="SAM labels", scale=spacing)
    labels = LabelVolume(labels_layer.data, session.volume)

    @thread_worker(progress={"total": len(session.volume), "desc": "segmenting"})
    def click_and_propagate():
        yield session.segment_frame(frame, object_id, FramePrompt.clicks(positive=[click]))
        yield from session.propagate("both")  # a generator: one result per slice

    def show(result) -> None:  # on the GUI thread: layers are only touched here
        labels.write(result)
        labels_layer.refresh()

    labels.begin("click and propagate")  # one undo step for the whole run, as in the panel
    worker = click_and_propagate()
    worker.yielded.connect(show)
    worker.finished.connect(labels.end)
    worker.start()
    viewer.dims.set_point(0, frame * spacing[0])
    return session, labels_layer, worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sam2.1-tiny", help="a model name from the registry")
    parser.add_argument("--checkpoint", help="a local checkpoint file instead")
    parser.add_argument("--random-weights", action="store_true", help="random weights (nothing to download)")
    args = parser.parse_args(argv)

    import napari

    if args.random_weights:
        import tempfile
        from pathlib import Path

        from napari_samed2.models.random_weights import save_random_checkpoint

        path = Path(tempfile.mkdtemp()) / "random_sam2.1_tiny.pt"
        model = load_model(save_random_checkpoint(path, "sam2.1-tiny", image_size=512), image_size=512)
    else:
        model = load_model(args.checkpoint or args.model)
    sample = synthetic_volume()
    frame = sample.image.shape[0] // 2
    rows, cols = np.nonzero(sample.labels[frame] == 1)
    viewer = napari.Viewer(title="napari-samed2 from a script")
    _session, labels_layer, worker = segment_in_viewer(
        viewer, model, sample.image, frame, (rows.mean(), cols.mean()), sample.spacing
    )

    def report() -> None:
        found, truth = labels_layer.data == 1, sample.labels == 1
        dice = 2 * (found & truth).sum() / max(found.sum() + truth.sum(), 1)
        print(f"{model.describe()}: Dice against the synthetic ground truth {dice:.3f}")

    worker.finished.connect(report)
    napari.run()


if __name__ == "__main__":
    main()
