import inspect
import subprocess
import sys

import tifffile

from napari_samed2 import load_model
from napari_samed2.train import build_parser, main
from napari_samed2.training import train
from tests.training.conftest import ellipse_pair


def test_every_option_is_a_parameter_of_train():
    parameters = inspect.signature(train).parameters
    dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert dests <= set(parameters), dests - set(parameters)
    assert {"images", "labels", "out", "model", "train", "steps", "resume"} <= dests
    # and train takes nothing the command line cannot give, except a LoadedModel for ``model``
    assert set(parameters) <= dests


def test_two_steps_end_to_end_write_a_loadable_checkpoint(tmp_path, tiny_checkpoint, capsys):
    image, label = ellipse_pair(0)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "img_labels.tif", label)
    out = tmp_path / "run"
    code = main([
        "--images", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "img_labels.tif"),
        "--model", str(tiny_checkpoint), "--train", "decoder", "--steps", "2", "--clip-length", "2",
        "--image-size", "128", "--device", "cpu", "--correction-frames", "0", "--out", str(out),
    ])
    assert code == 0
    captured = capsys.readouterr()
    assert "step 2: saved" in captured.out + captured.err
    model = load_model(out / "model.safetensors", device="cpu")
    assert model.image_size == 128 and model.spec.name == "sam2.1-tiny"
    assert (out / "resume.json").is_file()
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,") and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert all(float(r.split(",")[1]) > 0 for r in rows[1:])


def test_bad_input_is_an_error_message_not_a_traceback(tmp_path, capsys):
    code = main(["--images", "a.tif", "--labels", "b.tif", "--train", "everything", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown module name(s) to train: everything" in err and "decoder" in err


def test_importing_training_loads_no_qt_or_napari():
    code = (
        "import sys, napari_samed2.training, napari_samed2.train, napari_samed2.training.continual;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'napari', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ctrl_c_between_steps_saves_before_exiting(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """Ctrl-C while the command line draws the bar (not inside the training loop): the loop
    is told, saves the finished step and the resume state, and the command exits with 130."""
    import tqdm
    from safetensors import safe_open

    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.tqdm, "set_postfix", interrupt)
    image, label = ellipse_pair(0)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lbl.tif", label)
    out = tmp_path / "run"
    code = main([
        "--images", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lbl.tif"), "--model", str(tiny_checkpoint),
        "--train", "decoder", "--steps", "5", "--clip-length", "2", "--image-size", "128", "--device", "cpu",
        "--correction-frames", "0", "--out", str(out),
    ])
    assert code == 130
    assert f"--resume {out}" in capsys.readouterr().err
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        assert handle.metadata()["step"] == "1"
    assert '"step": 1' in (out / "resume.json").read_text()


def test_the_demo_recipe_trains_from_scratch_on_synthetic_volumes(tmp_path, capsys, monkeypatch):
    """How the demo model is made (with far fewer steps): its architecture's own initial
    weights, synthetic training volumes, a box-heavy prompt mix, held-out validation (on one
    volume here instead of four)."""
    from napari_samed2.training import trainer

    monkeypatch.setattr(trainer, "SYNTHETIC_VALIDATION", 1)
    out = tmp_path / "demo"
    code = main([
        "--synthetic", "2", "--model", "demo", "--from-scratch", "--train", "all", "--steps", "2",
        "--clip-length", "2", "--correction-frames", "0", "--prompt-probs", "box=0.5,click=0.25,mask=0.25",
        "--loss-weights", "dice=20", "--sample-volumes", "1", "--val-every", "2", "--device", "cpu", "--out", str(out),
        "--middle-start", "0.5", "--end-start", "0.25", "--single-slice", "0.5", "--box-noise", "0.03",
        "--revive", "0.25", "--correction-clicks", "1",
    ])
    assert code == 0, capsys.readouterr().err
    model = load_model(out / "best.safetensors", device="cpu")
    assert model.spec.name == "demo" and model.image_size == 256
    config = __import__("json").loads(__import__("safetensors").safe_open(
        str(out / "model.safetensors"), framework="pt").metadata()["config"])
    assert config["prompt_probs"] == {"box": 0.5, "click": 0.25, "mask": 0.25}
    assert config["middle_start_prob"] == 0.5 and config["end_start_prob"] == 0.25
    assert config["single_slice_prob"] == 0.5 and config["box_noise"] == 0.03 and config["revive_prob"] == 0.25
    assert config["loss_weights"] == {"focal": 20.0, "dice": 20.0, "iou": 1.0, "object_score": 1.0}
    metadata = __import__("safetensors").safe_open(str(out / "model.safetensors"), framework="pt").metadata()
    assert metadata["data"] == "synthetic volumes 0-1 of stream 0, sample family volumes 1-1"


def test_look_alikes_can_be_training_objects_and_the_checkpoint_says_so(tmp_path, capsys):
    out = tmp_path / "distractors"
    code = main([
        "--synthetic", "2", "--synthetic-distractors", "--model", "demo", "--from-scratch", "--train", "decoder",
        "--steps", "1", "--clip-length", "1", "--prompt-probs", "box=1", "--correction-frames", "0",
        "--val-every", "0", "--device", "cpu", "--out", str(out),
    ])
    assert code == 0, capsys.readouterr().err
    metadata = __import__("safetensors").safe_open(str(out / "model.safetensors"), framework="pt").metadata()
    assert metadata["data"] == "synthetic volumes 0-1 of stream 0, look-alike blobs as objects"
    assert main(["--images", "a.tif", "--labels", "b.tif", "--synthetic-distractors", "--out", str(tmp_path)]) == 2
    assert "give synthetic=N too" in capsys.readouterr().err
    assert main(["--synthetic", "1", "--clip-length", "1", "--out", str(tmp_path)]) == 2  # default mix has masks
    assert "nothing to learn" in capsys.readouterr().err
    code = main([
        "--synthetic", "1", "--model", "demo", "--from-scratch", "--train", "memory_encoder", "--clip-length", "1",
        "--prompt-probs", "box=1", "--correction-frames", "0", "--steps", "1", "--val-every", "0", "--device", "cpu",
        "--out", str(tmp_path / "frozen"),
    ])
    assert code == 2 and "no trained module (memory_encoder) affects" in capsys.readouterr().err


def test_training_data_is_files_or_synthetic_volumes_not_both(tmp_path, capsys):
    assert main(["--model", "demo", "--from-scratch", "--out", str(tmp_path)]) == 2
    assert "give training volumes" in capsys.readouterr().err
    assert main(["--images", "a.tif", "--labels", "b.tif", "--synthetic", "3", "--out", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    try:
        main(["--synthetic", "1", "--prompt-probs", "box:1", "--out", str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    assert "KIND=P pairs" in capsys.readouterr().err
    try:
        main(["--synthetic", "1", "--loss-weights", "dice", "--out", str(tmp_path)])
    except SystemExit as exc:
        assert exc.code == 2
    assert "TERM=WEIGHT pairs" in capsys.readouterr().err
    assert main(["--synthetic", "1", "--loss-weights", "boundary=1", "--out", str(tmp_path)]) == 2
    assert "unknown loss terms ['boundary']" in capsys.readouterr().err
