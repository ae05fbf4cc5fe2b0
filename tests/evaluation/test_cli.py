"""``python -m napari_samed2.evaluate``: files in, result files out, errors as messages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from napari_samed2.evaluate import main
from tests.evaluation.test_cases import write_nifti
from tests.evaluation.test_evaluate import two_objects


def nifti_pair(folder, name="case", label_shape_cut=0):
    image, label = two_objects()
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(folder / f"{name}_image.nii.gz", image, (2.0, 0.8, 0.8), np.float32)
    write_nifti(folder / f"{name}_label.nii.gz", label[:, label_shape_cut:], (2.0, 0.8, 0.8), np.uint8)
    return folder / f"{name}_image.nii.gz", folder / f"{name}_label.nii.gz"


def model_options(checkpoint):
    return ["--model", str(checkpoint), "--image-size", "256", "--device", "cpu"]


def test_command_evaluates_a_folder_and_refuses_to_overwrite(tiny_checkpoint, tmp_path, capsys):
    nifti_pair(tmp_path / "data")
    out = tmp_path / "out"
    argv = [str(tmp_path / "data"), *model_options(tiny_checkpoint), "--clicks", "1", "--out", str(out)]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dice_per_click.png", "results.csv", "summary.csv", "summary.md"]
    assert "| case | 1 | stock |" in (out / "summary.md").read_text()
    before = (out / "results.csv").read_bytes()
    assert main(argv) == 2
    assert "already holds results" in capsys.readouterr().err
    assert (out / "results.csv").read_bytes() == before


def test_command_errors_are_messages_and_leave_no_results(tiny_checkpoint, tmp_path, capsys):
    image, label = nifti_pair(tmp_path / "bad", label_shape_cut=3)
    out = tmp_path / "out"
    assert main([str(image), str(label), *model_options(tiny_checkpoint), "--out", str(out)]) == 2
    assert "label shape" in capsys.readouterr().err
    image, label = nifti_pair(tmp_path / "good")
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint")
    assert main([str(image), str(label), "--model", str(broken), "--device", "cpu", "--out", str(out)]) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert not any(out.glob("*.csv")) and not any(out.glob("*.md"))


def test_module_runs_as_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "napari_samed2.evaluate", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--policies" in result.stdout and "--library" in result.stdout


def test_evaluation_imports_no_qt_or_napari():
    code = (
        "import sys, napari_samed2.evaluation, napari_samed2.evaluate; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt5', 'PyQt6')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_overwrite_keeps_earlier_results_when_the_model_does_not_load(tmp_path, capsys):
    image, label = nifti_pair(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("earlier run\n")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"")
    argv = [str(image), str(label), "--model", str(broken), "--device", "cpu", "--out", str(out), "--overwrite"]
    assert main(argv) == 2
    assert "broken.pt" in capsys.readouterr().err
    assert (out / "results.csv").read_text() == "earlier run\n"


def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, capsys):
    image, label = nifti_pair(tmp_path / "data")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([str(image), str(label), "--model", "no-such-model", "--out", str(blocker / "out")]) == 2
    assert "cannot write to the output folder" in capsys.readouterr().err
