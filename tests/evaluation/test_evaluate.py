"""The harness end to end on random-weight models (the demo architecture; the tiny one where
a case needs its answers): both policies, the files it writes, and the clicks the engine
received, replayed against the protocol."""

from __future__ import annotations

import csv
import inspect

import matplotlib.image
import numpy as np
import pytest

from napari_samed2.engine import ConvergeStop, Session
from napari_samed2.engine.library import MemoryLibrary
from napari_samed2.errors import ExistingFileError, VolumeError
from napari_samed2.evaluation import EvalCase, EvalProtocol, EvaluationResults, evaluate, evaluate_cases, run_case
from napari_samed2.evaluation.prompts import correction_click, start_prompt, with_click
from napari_samed2.evaluation.protocol import object_prediction
from napari_samed2.evaluation.report import summary_markdown
from napari_samed2.io import IntensityWindow

SPACING = (2.0, 0.8, 0.8)


def two_objects(shape=(6, 40, 48), shift=0):
    """A bright disc drifting down the slices and a darker square, on noise."""
    rng = np.random.default_rng(1 + shift)
    image = rng.normal(50, 8, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    for z in range(1, shape[0] - 1):
        label[z][(yy - 12 - z - shift) ** 2 + (xx - 14) ** 2 <= 36] = 1
    label[2:5, 24:34, 28:40] = 2
    image[label == 1] += 150
    image[label == 2] += 80
    return image, label


@pytest.fixture
def engine_calls(monkeypatch):
    """Every ``segment_frame`` call: object, frame, prompt, and the object's mask before it."""
    calls = []
    original = Session.segment_frame

    def spy(self, frame, object_id, prompt):
        calls.append((self.policy.name, object_id, frame, prompt, object_prediction(self, object_id)))
        return original(self, frame, object_id, prompt)

    monkeypatch.setattr(Session, "segment_frame", spy)
    return calls


def test_both_policies_end_to_end_with_the_protocols_clicks(small_model, tmp_path, engine_calls):
    image, label = two_objects()
    out = tmp_path / "run"
    results = evaluate(
        small_model, image, label, spacing=SPACING, name="discs", policies=["stock", "confidence"],
        clicks=2, seed=3, out=out,
    )
    records = results.records
    assert len(records) == 2 * 2 * 3  # objects x policies x (start + 2 clicks)
    assert {(r.policy, r.object_id) for r in records} == {(p, o) for p in ("stock", "confidence") for o in (1, 2)}

    # Replay: the engine got the start prompt, then each click computed from the mask the
    # user saw at that moment, added to the prompts already on that frame.
    for policy in ("stock", "confidence"):
        for object_id in (1, 2):
            truth = label == object_id
            rng = np.random.default_rng([3, 0, object_id])
            calls = [c for c in engine_calls if c[:2] == (policy, object_id)]
            rows = sorted((r for r in records if (r.policy, r.object_id) == (policy, object_id)), key=lambda r: r.step)
            frame, prompt = start_prompt(truth, SPACING, rng, "box")
            assert calls[0][2] == frame == rows[0].frame and calls[0][3].box == prompt.box
            on_frame = {frame: prompt}
            clicked = [r for r in rows[1:] if r.prompt != "none"]
            assert len(calls) == 1 + len(clicked)
            for call, row in zip(calls[1:], clicked, strict=True):
                click = correction_click(truth, call[4], SPACING, rng)
                expected = with_click(on_frame.get(click.frame), click)
                on_frame[click.frame] = expected
                assert call[2] == click.frame == row.frame
                np.testing.assert_array_equal(call[3].points, expected.points)
                np.testing.assert_array_equal(call[3].labels, expected.labels)
                assert call[3].box == expected.box
                assert (row.row, row.col) == click.point
                assert row.prompt == ("positive" if click.positive else "negative")
            # each row's Dice is the Dice of the mask the next click was computed from
            for call, row in zip(calls[1:], rows, strict=False):
                overlap = 2 * (call[4] & truth).sum() / (call[4].sum() + truth.sum())
                assert row.dice == pytest.approx(overlap)

    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    assert [float(r["dice"]) for r in rows] == pytest.approx([r.dice for r in records], rel=1e-5)
    with (out / "summary.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    summary = (out / "summary.md").read_text()
    assert "| stock | 2 |" in summary and "| confidence | 2 |" in summary
    assert matplotlib.image.imread(out / "dice_per_click.png").shape[2] in (3, 4)
    assert not (out / "results.partial.csv").exists()
    assert {s.clicks_to_target for s in results.summaries} <= {0, 1, 2, 3}

    with pytest.raises(ExistingFileError, match="already holds results"):
        evaluate(small_model, image, label, spacing=SPACING, clicks=0, out=out)


def test_interrupted_run_keeps_finished_steps_in_a_partial_file(small_model, tmp_path, monkeypatch):
    image, label = two_objects()
    done = []

    def stop_after_two(event):
        done.append(event.record)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(small_model, image, label, spacing=SPACING, clicks=1, out=tmp_path, progress=stop_after_two)
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "summary.md").exists()
    with (tmp_path / "results.partial.csv").open() as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == [0, 1]


def test_library_memories_pass_from_one_case_to_the_next(small_model, monkeypatch):
    added = []
    original = Session.add_to_library

    def spy(self, object_id, **kwargs):
        added.append((object_id, kwargs["case"], id(self.library)))
        return original(self, object_id, min_confidence=0.0, max_entries=kwargs.get("max_entries", 8),
                        label=kwargs.get("label", ""), case=kwargs["case"])

    monkeypatch.setattr(Session, "add_to_library", spy)
    library = MemoryLibrary()
    protocol = EvalProtocol(clicks=0)
    first = EvalCase.from_arrays(*two_objects(), spacing=SPACING, name="first")
    list(run_case(small_model, first, protocol, "stock", library=library))
    assert [a[:2] for a in added] == [(1, "first"), (2, "first")]
    stored = len(library)
    assert stored > 0
    seen = []
    monkeypatch.setattr(Session, "_retrieve", lambda self, *a: seen.append(len(self.library)) or None)
    second = EvalCase.from_arrays(*two_objects(shift=2), spacing=SPACING, name="second")
    records = list(run_case(small_model, second, protocol, "stock", library=library, case_index=1))
    assert seen and set(seen) == {stored}  # every tracked frame of the new case could retrieve them
    assert all(r.library for r in records)


def test_every_command_line_option_is_a_parameter_of_evaluate_cases():
    from napari_samed2.evaluate import _NOT_PARAMETERS, build_parser

    parameters = set(inspect.signature(evaluate_cases).parameters)
    options = {a.dest for a in build_parser()._actions if a.dest != "help"} - _NOT_PARAMETERS
    assert options <= parameters, options - parameters


def test_the_protocols_converge_stop_reaches_the_re_propagation(small_model, monkeypatch):
    """The simulated user re-propagates with the protocol's converge-stop: the same clicks,
    fewer slices recomputed after them, and the rows name the protocol."""
    asked = []
    original = Session.repropagate

    def spy(self, converge=None):
        asked.append(converge)
        return original(self, converge)

    monkeypatch.setattr(Session, "repropagate", spy)
    case = EvalCase.from_arrays(*two_objects(shape=(12, 40, 48)), spacing=SPACING, name="long")
    rule = ConvergeStop(iou=0.9, frames=2)
    full = list(run_case(small_model, case, EvalProtocol(clicks=1), "stock"))
    assert asked and set(asked) == {None}
    asked.clear()
    stopped = list(run_case(small_model, case, EvalProtocol(clicks=1, converge=rule), "stock"))
    assert asked and set(asked) == {rule}
    assert {r.protocol for r in full} == {"box+1clicks"}
    assert {r.protocol for r in stopped} == {"box+1clicks+converge0.9x2"}
    corrections = [(a, b) for a, b in zip(full, stopped, strict=True) if a.step > 0]
    assert [(a.frame, a.prompt) for a, _ in corrections] == [(b.frame, b.prompt) for _, b in corrections]
    assert all(0 < b.frames_tracked <= a.frames_tracked for a, b in corrections)
    assert sum(b.frames_tracked for _, b in corrections) < sum(a.frames_tracked for a, _ in corrections)
    assert [r.frames_tracked for r in full if r.step == 0] == [13, 13]  # both ways: the start slice in each


def test_converge_stop_on_the_command_line():
    from napari_samed2.evaluate import build_parser

    required = ["image", "label", "--out", "o"]
    parser = build_parser()
    assert parser.parse_args(required).converge is None
    assert parser.parse_args([*required, "--converge-stop"]).converge == ConvergeStop(0.98, 3)
    assert parser.parse_args([*required, "--converge-stop", "0.9,5"]).converge == ConvergeStop(0.9, 5)
    for bad in ("1.5,3", "0.9", "0.9,x"):
        with pytest.raises(SystemExit):
            parser.parse_args([*required, "--converge-stop", bad])
    results = EvaluationResults((), EvalProtocol(converge=ConvergeStop()), "model", ())
    assert "Protocol box+5clicks+converge0.98x3: each re-propagation stops once 3" in summary_markdown(results, [])


def test_the_user_marks_slices_without_the_object_absent_instead_of_clicking(tiny_model, engine_calls):
    """With ``absent``, a correction on a slice the object is not on is the panel's *Not on this
    slice* (an empty mask); anywhere else it is the same click as without it."""
    case = EvalCase.from_arrays(*two_objects(), spacing=SPACING, name="absent")
    truth = case.label
    records = list(run_case(tiny_model, case, EvalProtocol(clicks=3, absent=True), "stock"))
    corrections = [(r, call) for r, call in zip(records, engine_calls, strict=True) if r.step > 0]
    absent = [(r, call) for r, call in corrections if r.prompt == "absent"]
    assert absent, "no correction landed on a slice without the object: the case does not test this"
    for record, (_, object_id, frame, prompt, _) in absent:
        assert prompt.mask is not None and not prompt.mask.any()
        assert not (truth[frame] == object_id).any()
    for record, (_, object_id, frame, prompt, _) in corrections:
        if record.prompt == "negative":
            assert (truth[frame] == object_id).any()  # a slice with the object: a click, as before
    assert {r.protocol for r in records} == {"box+3clicks+absent"}
    clicks_only = list(run_case(tiny_model, case, EvalProtocol(clicks=3), "stock"))
    assert "absent" not in {r.prompt for r in clicks_only}


def test_the_protocols_intensity_window_is_what_the_session_sees(small_model, monkeypatch):
    """As the panel's *Intensity window*: every session of the run windows the image with it,
    the rows and the report name it, and the images it is given in differ from the default's."""
    seen = []
    original = Session.__init__

    def spy(self, model, volume, **options):
        original(self, model, volume, **options)
        seen.append(self.volume.normalise)

    monkeypatch.setattr(Session, "__init__", spy)
    image, label = two_objects()
    case = EvalCase.from_arrays(image * 1000.0 - 1000.0, label, spacing=SPACING, name="ct")
    results = evaluate_cases(small_model, [case], clicks=0, window="ct:soft_tissue")
    assert seen == [IntensityWindow(-160.0, 240.0)]
    assert {r.protocol for r in results.records} == {"box+0clicks+window-160to240"}
    assert "Intensity window: -160 to 240." in summary_markdown(results, [])
    seen.clear()
    evaluate_cases(small_model, [case], clicks=0, window=(-1000, 0))
    evaluate_cases(small_model, [case], clicks=0)
    assert seen[0] == IntensityWindow(-1000.0, 0.0) and seen[1] == IntensityWindow.from_percentiles(case.image)


def test_a_window_that_cannot_be_used_is_refused_before_any_work(small_model):
    from napari_samed2.evaluate import build_parser

    case = EvalCase.from_arrays(*two_objects(), spacing=SPACING, name="case")
    for bad, message in (("ct:heart", "unknown CT preset"), ("display", "contrast limits"), ((5, 1), "below low"),
                         ((1, 2, 3), r"\(low, high\)")):
        with pytest.raises(VolumeError, match=message):
            evaluate_cases(small_model, [case], clicks=0, window=bad)
    parser = build_parser()
    required = ["image", "label", "--out", "o"]
    assert parser.parse_args(required).window is None
    assert parser.parse_args([*required, "--window", "ct:lung"]).window == IntensityWindow(-1350.0, 150.0)
    assert parser.parse_args([*required, "--window=-100,300"]).window == IntensityWindow(-100.0, 300.0)
    for bad in ("ct:heart", "300,-100", "1,2,3", "low,high"):
        with pytest.raises(SystemExit):
            parser.parse_args([*required, "--window", bad])
