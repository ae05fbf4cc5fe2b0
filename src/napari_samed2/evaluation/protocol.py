"""The interactive protocol: a simulated user drives a real :class:`Session`, step by step.

Per object: step 0 puts the start prompt (a box, or one click) on the middle slice of the
object's extent and propagates both ways; steps 1..K each click the centre of the largest
3D error and run the re-propagation a user would run (``Session.repropagate``: a full re-run,
or with ``EvalProtocol.converge`` one that stops where the masks agree again, as the GUI does by
default). After every step the object's mask volume is scored. There is no second copy of the tracking code: the
masks scored are the ones the plugin would show.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from napari_samed2.engine import ConvergeStop, EmbeddingCache, FramePrompt, Session
from napari_samed2.engine.library import MemoryLibrary
from napari_samed2.evaluation.cases import EvalCase
from napari_samed2.evaluation.metrics import (
    DICE_TARGET,
    NSD_TOLERANCE_MM,
    dice,
    normalized_surface_dice,
)
from napari_samed2.evaluation.prompts import START_PROMPTS, correction_click, start_prompt, with_click
from napari_samed2.io.intensity import IntensityWindow
from napari_samed2.models.loading import LoadedModel

POLICIES = ("stock", "confidence")


@dataclass(frozen=True)
class EvalProtocol:
    """How the simulated user behaves and how steps are scored (CVPR 2025 challenge defaults).

    ``converge``: how the user re-propagates after a correction; ``None`` recomputes every
    stale slice, a :class:`ConvergeStop` stops where the masks agree again (the GUI's default).
    ``absent``: where the correction would be a negative click on a slice the object is not on
    at all, the user presses *Not on this slice* instead (:meth:`FramePrompt.absent`); one
    interaction either way, so it counts as one of the ``clicks``. ``window``: how the image's
    values reach the model, as the panel's *Intensity window* (``None``: the volume's 0.5-99.5 %
    percentiles; a CT window for CT in HU)."""

    start: str = "box"  # "box" or "click"
    clicks: int = 5  # correction clicks after the start prompt
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM
    dice_target: float = DICE_TARGET
    seed: int = 0  # tie-breaking between equally good click positions
    converge: ConvergeStop | None = None
    absent: bool = False
    window: IntensityWindow | None = None

    def __post_init__(self) -> None:
        if self.start not in START_PROMPTS:
            raise ValueError(f"start prompt must be one of {START_PROMPTS}, not {self.start!r}")
        if int(self.clicks) != self.clicks or self.clicks < 0:
            raise ValueError(f"clicks must be a whole number >= 0, not {self.clicks!r}")
        if not self.nsd_tolerance_mm >= 0:
            raise ValueError(f"the NSD tolerance must be >= 0 mm, not {self.nsd_tolerance_mm!r}")
        if self.converge is not None and not isinstance(self.converge, ConvergeStop):
            raise ValueError(
                f"converge must be None or a ConvergeStop, e.g. ConvergeStop(0.98, 3); got {self.converge!r}"
            )
        if self.window is not None and not isinstance(self.window, IntensityWindow):
            raise ValueError(f"window must be None or an IntensityWindow, e.g. IntensityWindow.preset('soft_tissue'); got {self.window!r}")

    @property
    def name(self) -> str:
        """E.g. ``box+5clicks`` (full re-runs), ``box+5clicks+converge0.98x3`` or ``box+5clicks+absent``."""
        name = f"{self.start}+{self.clicks}clicks"
        if self.converge is not None:
            name += f"+converge{self.converge.iou:g}x{self.converge.frames}"
        if self.absent:
            name += "+absent"
        if self.window is not None:
            name += f"+window{self.window.low:g}to{self.window.high:g}"
        return name


@dataclass(frozen=True)
class StepRecord:
    """One object after one step of one case under one memory policy: a row of results.csv.

    ``prompt`` is what the user did: ``box`` or ``click`` (step 0), ``positive``,
    ``negative`` or ``absent`` (corrections; see ``EvalProtocol.absent``), ``none`` when the
    mask was already exact and there was nothing to click. ``row``/``col`` locate the click
    (NaN for a box, whose corners are in ``box``). ``frames_encoded`` counts image-encoder
    runs in the step (the first step of a session pays for encoding the volume),
    ``frames_tracked`` the slices its propagation computed (fewer with a converge-stop).
    ``protocol`` is :attr:`EvalProtocol.name`, so rows of runs with different protocols can
    be put side by side.
    """

    case: str
    object_id: int
    policy: str
    library: bool
    step: int
    prompt: str
    frame: int
    row: float
    col: float
    box: str
    dice: float
    nsd: float
    seconds: float
    frames_encoded: int
    frames_tracked: int
    protocol: str


def run_case(
    model: LoadedModel,
    case: EvalCase,
    protocol: EvalProtocol,
    policy: str,
    *,
    axis: int = 0,
    library: MemoryLibrary | None = None,
    case_index: int = 0,
) -> Iterator[StepRecord]:
    """Evaluate every object of ``case`` under one memory policy, yielding each step's record.

    A fresh session (and embedding cache) per case and policy, so every policy starts cold
    as a user opening the case would. With a ``library``, its memories guide the case and,
    once all steps are done, the user "confirms" the case: each object's confident memories
    are added to it for the next cases.
    """
    spacing = tuple(case.spacing[a] for a in (axis, *(d for d in range(3) if d != axis)))
    truth = np.moveaxis(case.label, axis, 0)
    cache = EmbeddingCache()
    try:
        # a simulated user never undoes: no history, so replaced memories are freed at once
        session = Session(model, case.image, axis=axis, policy=policy, cache=cache, library=library, undo_steps=0,
                          normalise=protocol.window)
        for object_id in case.object_ids:
            session.add_object(object_id)
        for object_id in case.object_ids:
            yield from _run_object(session, truth == object_id, spacing, protocol, policy, case, object_id, case_index)
        if library is not None:
            for object_id in case.object_ids:
                session.add_to_library(object_id, case=case.name, label=str(object_id))
    finally:
        cache.close()


def _run_object(
    session: Session, truth: np.ndarray, spacing: Sequence[float], protocol: EvalProtocol,
    policy: str, case: EvalCase, object_id: int, case_index: int,
) -> Iterator[StepRecord]:
    rng = np.random.default_rng([protocol.seed, case_index, object_id])
    scorer = _Scorer(session, truth, spacing, protocol, policy, case.name, object_id)

    def segment_and_propagate() -> int:
        session.segment_frame(frame, object_id, prompt)
        return sum(1 for _ in session.propagate("both", object_ids=[object_id]))

    def click_and_repropagate() -> int:
        session.segment_frame(click.frame, object_id, prompt)
        return sum(1 for _ in session.repropagate(protocol.converge))

    frame, prompt = start_prompt(truth, spacing, rng, protocol.start)
    yield scorer.step(0, protocol.start, frame, prompt, segment_and_propagate)
    for step in range(1, protocol.clicks + 1):
        click = correction_click(truth, scorer.prediction, spacing, rng)
        if click is None:  # the mask is exact: the user has nothing to click, the mask stays
            yield scorer.step(step, "none", -1, None, lambda: 0)
            continue
        if protocol.absent and not click.positive and not truth[click.frame].any():
            prompt, kind = FramePrompt.absent(truth.shape[1:]), "absent"
        else:
            prompt = with_click(session.prompts[object_id].get(click.frame), click)
            kind = "positive" if click.positive else "negative"
        yield scorer.step(step, kind, click.frame, prompt, click_and_repropagate)


@dataclass(eq=False)
class _Scorer:
    """Times one step of one object, then scores its mask volume (kept for the next click)."""

    session: Session
    truth: np.ndarray
    spacing: Sequence[float]
    protocol: EvalProtocol
    policy: str
    case: str
    object_id: int
    prediction: np.ndarray | None = None

    def step(self, step: int, kind: str, frame: int, prompt: FramePrompt | None, action) -> StepRecord:
        encoded, start = self.session.frames_encoded, time.perf_counter()
        tracked = action()
        seconds = time.perf_counter() - start
        self.prediction = object_prediction(self.session, self.object_id)
        row = col = float("nan")
        if kind in ("click", "positive", "negative"):
            row, col = (float(v) for v in prompt.points[-1])
        return StepRecord(
            case=self.case, object_id=self.object_id, policy=self.policy,
            library=self.session.library is not None, step=step, prompt=kind, frame=frame,
            row=row, col=col, box=" ".join(f"{v:g}" for v in prompt.box) if kind == "box" else "",
            dice=dice(self.prediction, self.truth),
            nsd=normalized_surface_dice(self.prediction, self.truth, self.spacing, self.protocol.nsd_tolerance_mm),
            seconds=seconds, frames_encoded=self.session.frames_encoded - encoded, frames_tracked=tracked,
            protocol=self.protocol.name,
        )


def object_prediction(session: Session, object_id: int) -> np.ndarray:
    """The object's current mask volume in frame order (frames it has no mask on are empty)."""
    volume = np.zeros((len(session.volume), *session.volume.frame_shape), dtype=bool)
    for frame in range(len(session.volume)):
        result = session.result(frame).objects.get(object_id)
        if result is not None:
            volume[frame] = result.mask
    return volume
