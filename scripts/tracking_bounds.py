"""Where a model's 3D Dice goes, per held-out object: the 2D model against tracking.

    python scripts/tracking_bounds.py MODEL [--count 4]

For each labelled object of the first ``count`` held-out synthetic volumes (stream 10,001, as
``evaluate_demo.py``'s synthetic set), 3D Dice of:

* ``box_every``: a box on every slice where the object is, each segmented alone (no tracking;
  each box reaches one pixel past the object's last row and column, so that a one-pixel-thin
  cross-section has an area);
* ``box_mid``: the evaluation's start prompt (a box on the middle slice of the object's
  extent, :func:`~napari_samed2.evaluation.prompts.start_prompt`), propagated both ways;
* ``box_mid_inside``: the same, predictions kept only on the slices where the object is;
* ``mask_mid``: the true mask on the middle slice, propagated both ways;
* ``copy_mid``: no model, the middle slice's true mask copied to every slice where the object is;
* ``box_every_clipped``: ``box_every`` with each slice's mask cut to its box.

At the end, ``box_every``'s wrong pixels over all objects: predicted outside the object's
box, predicted inside it, and missed. ``--2d`` measures ``box_every`` and ``box_every_clipped``
only (an image-stage checkpoint, whose tracking is untrained). ``--stream N`` below 10,000
measures volumes of training stream N instead (how well the model fits what it was trained on).

docs/training.md (runs 7 and 8, session 10) reads these against each other.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from napari_samed2 import load_model
from napari_samed2.engine import FramePrompt, Session
from napari_samed2.evaluation.metrics import dice
from napari_samed2.evaluation.prompts import bounding_box, start_prompt
from napari_samed2.training.synthetic import HELD_OUT_SEED, held_out_cases, synthetic_stream


def box_prompt(mask: np.ndarray) -> FramePrompt:
    r0, c0, r1, c1 = bounding_box(mask)
    return FramePrompt(box=(r0, c0, r1 + 1, c1 + 1))  # a one-pixel-thin object still has a box with area


def propagated(model, image: np.ndarray, frame: int, prompt: FramePrompt, cache) -> np.ndarray:
    session = Session(model, image, cache=cache)
    session.add_object(1)
    session.segment_frame(frame, 1, prompt)
    out = np.zeros(image.shape, bool)
    for result in session.propagate("both", start=frame):
        out[result.frame] = result.objects[1].mask
    return out


def inside_box(prompt: FramePrompt, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of ``prompt``'s box."""
    r0, c0, r1, c1 = (int(v) for v in prompt.box)
    box = np.zeros(shape, bool)
    box[r0:r1 + 1, c0:c1 + 1] = True
    return box


def bounds(model, image: np.ndarray, truth: np.ndarray, spacing, errors: np.ndarray,
           two_d: bool = False) -> dict[str, float]:
    """The measures above for one object; adds its ``box_every`` wrong pixels (outside the
    box, inside it, missed) to ``errors``. ``two_d``: ``box_every`` and ``box_every_clipped``
    only (an image-stage checkpoint, whose tracking is untrained)."""
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    session = Session(model, image)
    session.add_object(1)
    every = np.zeros_like(truth)
    clipped = np.zeros_like(truth)
    for z in present:
        prompt = box_prompt(truth[z])
        every[z] = session.segment_frame(int(z), 1, prompt).objects[1].mask
        box = inside_box(prompt, truth[z].shape)
        clipped[z] = every[z] & box
        wrong = every[z] & ~truth[z]
        errors += [(wrong & ~box).sum(), (wrong & box).sum(), (truth[z] & ~every[z]).sum()]
    if two_d:
        return {"box_every": dice(every, truth), "box_every_clipped": dice(clipped, truth)}
    middle, start = start_prompt(truth, spacing, np.random.default_rng(0), "box")
    from_box = propagated(model, image, middle, start, session.cache)
    inside = np.zeros_like(truth)
    inside[present] = from_box[present]
    copied = np.zeros_like(truth)
    copied[present] = truth[middle]
    return {
        "box_every": dice(every, truth),
        "box_mid": dice(from_box, truth),
        "box_mid_inside": dice(inside, truth),
        "mask_mid": dice(propagated(model, image, middle, FramePrompt(mask=truth[middle]), session.cache), truth),
        "copy_mid": dice(copied, truth),
        "box_every_clipped": dice(clipped, truth),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="registry name or checkpoint file")
    parser.add_argument("--count", type=int, default=4, help="held-out volumes")
    parser.add_argument("--stream", type=int, default=10_001,
                        help="synthetic stream: held out from 10,000 on, training streams below")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--2d", dest="two_d", action="store_true",
                        help="the 2D model only (box_every, box_every_clipped): for an image-stage checkpoint")
    args = parser.parse_args()
    model = load_model(args.model, device=args.device)
    if args.stream >= HELD_OUT_SEED:
        cases = held_out_cases(args.count, None, args.stream)
    else:
        cases = list(itertools.islice(synthetic_stream(args.stream), args.count))
    rows = []
    errors = np.zeros(3, np.int64)
    for k, case in enumerate(cases):
        for object_id in range(1, case.num_objects + 1):
            row = bounds(model, case.image, case.labels == object_id, case.spacing, errors, args.two_d)
            rows.append(row)
            print(f"volume {k} object {object_id} ({case.kinds[object_id - 1]}): "
                  + "  ".join(f"{name} {value:.3f}" for name, value in row.items()), flush=True)
    for name in rows[0]:
        values = [row[name] for row in rows]
        print(f"{name:17s} median {np.median(values):.3f}  mean {np.mean(values):.3f}")
    outside, inside, missed = errors
    print(f"box_every wrong pixels: {outside} predicted outside the box, {inside} inside it, {missed} missed")


if __name__ == "__main__":
    main()
