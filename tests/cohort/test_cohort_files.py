"""Cohort definitions and prompt files: read from folders, CSVs and saved sessions, and every
unusable one refused with a message that says what to fix. No model runs here, except to
save one session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_samed2.cohort import export_prompts, read_cohort, read_prompts, write_prompts
from napari_samed2.engine import FramePrompt, Session
from napari_samed2.errors import CohortError, ExistingFileError, PromptFileError

from tests.cohort.conftest import BROKEN, GOOD, synthetic


def test_a_folder_lists_images_with_their_labels_and_prompts(cohort_folder):
    cohort = read_cohort(cohort_folder)
    assert [v.name for v in cohort] == [*GOOD, BROKEN]
    first = cohort.volumes[0]
    assert first.image == cohort_folder / "images" / "a.nii.gz"
    assert first.label == cohort_folder / "labels" / "a.nii.gz"
    assert first.prompts == cohort_folder / "prompts" / "a.json"


def test_a_flat_folder_and_a_csv(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("s1_image.nii.gz", "s1_label.nii.gz", "s2_image.nii.gz"):
        (flat / name).write_bytes(b"")
    (flat / "s1_prompts.json").write_text("{}")
    (flat / "s2_session").mkdir()
    (flat / "s2_session" / "session.json").write_text("{}")
    cohort = read_cohort(flat)
    assert [(v.name, v.label and v.label.name, v.prompts and v.prompts.name) for v in cohort] == [
        ("s1", "s1_label.nii.gz", "s1_prompts.json"), ("s2", None, "s2_session")
    ]
    listing = tmp_path / "cohort.csv"
    listing.write_text("image,label,name\nflat/s1_image.nii.gz,flat/s1_label.nii.gz,first\n/abs/s2.nii.gz,,\n")
    cohort = read_cohort(listing)
    assert [(v.name, v.image, v.label, v.prompts) for v in cohort] == [
        ("first", flat / "s1_image.nii.gz", flat / "s1_label.nii.gz", None),
        ("s2", Path("/abs/s2.nii.gz"), None, None),
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("path,label\na.nii.gz,\n", "no 'image' column"),
    ("image,weight\na.nii.gz,3\n", "unknown columns"),
    ("image\na.nii.gz\nother/a.nii.gz\n", "two volumes are named 'a'"),
    ("image\n\n", "lists no volumes"),
    ("image,name\na.nii.gz,../x\n", "cannot name output files"),
])
def test_unusable_cohort_files_are_refused(tmp_path, text, message):
    listing = tmp_path / "cohort.csv"
    listing.write_text(text)
    with pytest.raises(CohortError, match=message):
        read_cohort(listing)


def test_missing_or_empty_cohorts_are_refused(tmp_path):
    with pytest.raises(CohortError, match="does not exist"):
        read_cohort(tmp_path / "nowhere")
    with pytest.raises(CohortError, match="no images"):
        read_cohort(tmp_path)
    (tmp_path / "list.txt").write_text("a.nii.gz")
    with pytest.raises(CohortError, match="not a cohort"):
        read_cohort(tmp_path / "list.txt")


def test_prompts_file_round_trip_keeps_clicks_in_order(tmp_path):
    prompts = {
        1: {2: FramePrompt([[10, 12], [30, 31]], [0, 1], box=(5, 6, 40, 41))},
        3: {0: FramePrompt.clicks(positive=[[8, 9]])},
    }
    path = write_prompts(tmp_path / "p.json", prompts, shape=(6, 64, 64))
    read = read_prompts(path)
    assert read.shape == (6, 64, 64)
    assert sorted(read.objects) == [1, 3] and sorted(read.objects[1]) == [2]
    again = read.objects[1][2]
    assert again.box == (5, 6, 40, 41)
    assert np.array_equal(again.points, [[10, 12], [30, 31]]) and list(again.labels) == [0, 1]
    with pytest.raises(ExistingFileError):
        write_prompts(path, prompts)
    with pytest.raises(PromptFileError, match="mask"):
        write_prompts(tmp_path / "m.json", {1: {0: FramePrompt(mask=np.ones((4, 4), bool))}})
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("not json", "not a readable JSON"),
    ('{"objects": {}}', "neither a prompts file"),
    ('{"format": "napari-samed2-prompts", "version": 2, "objects": {}}', "version 2"),
    ('{"format": "napari-samed2-prompts", "objects": {"0": {"1": {"box": [1, 1, 5, 5]}}}}', "label value"),
    ('{"format": "napari-samed2-prompts", "objects": {"1": {"x": {"box": [1, 1, 5, 5]}}}}', "slice number"),
    ('{"format": "napari-samed2-prompts", "objects": {"1": {"2": {"bbox": [1, 1, 5, 5]}}}}', "unknown keys"),
    ('{"format": "napari-samed2-prompts", "objects": {"1": {"2": {"box": [5, 5, 1, 1]}}}}', "no area"),
    ('{"format": "napari-samed2-prompts", "objects": {"1": {"2": {}}}}', "no box and no click"),
])
def test_unusable_prompt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message):
        read_prompts(path)


def test_prompts_that_do_not_fit_the_volume_are_refused(tmp_path):
    path = write_prompts(tmp_path / "p.json", {1: {9: FramePrompt.clicks([[3, 3]])}})
    with pytest.raises(PromptFileError, match="slice 9, but the volume has 6 slices"):
        read_prompts(path).check((6, 64, 64), 6, (64, 64))
    path = write_prompts(tmp_path / "q.json", {1: {0: FramePrompt.clicks([[3, 300]])}}, shape=(6, 64, 64))
    with pytest.raises(PromptFileError, match="outside"):
        read_prompts(path).check((6, 64, 64), 6, (64, 64))
    with pytest.raises(PromptFileError, match="of another image"):
        read_prompts(path).check((7, 64, 64), 7, (64, 64))


def test_a_saved_session_is_a_prompt_file_masks_included(small_model, tmp_path):
    image, label = synthetic(0)
    session = Session(small_model, image)
    session.segment_frame(2, session.add_object(), FramePrompt([[28, 24], [5, 5]], [1, 0], box=(18, 8, 38, 36)))
    session.segment_frame(1, session.add_object(5), FramePrompt(mask=label[1].astype(bool)))
    folder = session.save(tmp_path / "saved")
    for path in (folder, folder / "session.json"):
        read = read_prompts(path)
        assert read.shape == image.shape and sorted(read.objects) == [1, 5]
        assert read.objects[1][2].box == (18, 8, 38, 36) and list(read.objects[1][2].labels) == [1, 0]
        assert np.array_equal(read.objects[5][1].mask, label[1].astype(bool))
    exported = tmp_path / "exported.json"
    with pytest.raises(PromptFileError, match="mask"):
        export_prompts(session, exported)
    session.remove_object(5)
    read = read_prompts(export_prompts(session, exported))
    assert json.loads(exported.read_text())["shape"] == [6, 64, 64]
    assert np.array_equal(read.objects[1][2].points, session.prompts[1][2].points)


def test_cohort_imports_no_qt_or_napari():
    import subprocess
    import sys

    code = (
        "import sys, napari_samed2.cohort, napari_samed2.cohort.cli as cli; cli.build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'magicgui')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
