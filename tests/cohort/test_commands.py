"""The three cohort commands on a local Dask cluster of two worker processes give what the
volumes give one by one in this process; a damaged file, a dead worker and an interrupted run
cost only their own volumes; an embedded volume opens without running the image encoder."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
from safetensors.torch import load_file

from napari_samed2.cohort import embed_cohort, evaluate_cohort, read_cohort, segment_cohort
from napari_samed2.cohort import tasks
from napari_samed2.cohort.tasks import CohortTask, ModelRef
from napari_samed2.cohort.cli import build_parser, main
from napari_samed2.cohort.runner import SCHEDULER_CONFIG, dask_client, stream_on_dask
from napari_samed2.engine import FramePrompt, Session
from napari_samed2.engine.embedding_cache import CACHE_DIR_ENV
from napari_samed2.errors import CohortError
from napari_samed2.io import IntensityWindow, read_image

from tests.cohort.conftest import BROKEN, GOOD, SLICES
from tests.conftest import TEST_IMAGE_SIZE

CLICKS = 1
IMAGE_SIZE = TEST_IMAGE_SIZE // 2  # the same architecture on a quarter of the pixels: a quick test
VARYING = {"seconds", "worker"}  # what differs between two runs of the same volume


def options(checkpoint) -> dict:
    return {"model": checkpoint, "image_size": IMAGE_SIZE, "device": "cpu", "dtype": "float32"}


def run_all(folder, checkpoint, out, **where) -> dict:
    """embed, then segment (reading those embeddings), then evaluate, into ``out``."""
    common = {**options(checkpoint), **where}
    return {
        "embed": embed_cohort(folder, out=out, cache=out / "cache", **common),
        "segment": segment_cohort(folder, out=out, cache=out / "cache", **common),
        "evaluate": evaluate_cohort(folder, out=out, clicks=CLICKS, policies=["confidence"], **common),
    }


def rows(report) -> str:
    """The rows without what varies between runs, as text (NaN equals NaN there)."""
    table = {r.name: {k: v for k, v in dataclasses.asdict(r).items() if k not in VARYING} for r in report.rows}
    return json.dumps(table, sort_keys=True)


def steps(report) -> str:
    return json.dumps([{**dataclasses.asdict(r), "seconds": 0} for r in report.evaluation.records])


@pytest.fixture(scope="module", autouse=True)
def workers_threads():
    """PyTorch in this process with as many threads as each of the two workers gets, so
    that in-process and cluster runs compare bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, tasks.os_cpu_count() // 2))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def in_process(cohort_folder, small_checkpoint, tmp_path_factory):
    """The reference: every volume one by one in this process."""
    out = tmp_path_factory.mktemp("in_process")
    return out, run_all(cohort_folder, small_checkpoint, out, workers=0)


@pytest.fixture(scope="module")
def cluster():
    """The commands' own local cluster of two worker processes (one thread each), except
    that a volume whose worker dies is not tried again (the death test stays short)."""
    with contextlib.ExitStack() as stack:
        with mock.patch.dict(SCHEDULER_CONFIG, {"distributed.scheduler.allowed-failures": 0}):
            client = stack.enter_context(dask_client(2))
        yield client


@pytest.fixture(scope="module")
def on_cluster(cohort_folder, small_checkpoint, tmp_path_factory, cluster):
    out = tmp_path_factory.mktemp("on_cluster")
    return out, run_all(cohort_folder, small_checkpoint, out, scheduler=cluster.scheduler.address)


def test_two_workers_give_what_one_by_one_in_process_gives(in_process, on_cluster, cluster):
    (here, local), (there, remote) = in_process, on_cluster
    for kind in ("embed", "segment", "evaluate"):
        assert rows(remote[kind]) == rows(local[kind]), kind
        assert {r.worker for r in remote[kind].rows if r.status == "done"} <= {"0", "1"}
    # the same embeddings, stored under the same keys
    files = sorted(p.name for p in (here / "cache").glob("*.safetensors"))
    assert len(files) == 2 * 6 and files == sorted(p.name for p in (there / "cache").glob("*.safetensors"))
    for name in files[:3]:
        a, b = load_file(str(here / "cache" / name)), load_file(str(there / "cache" / name))
        assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # the same labels, on the image's grid, and the same evaluation steps
    for name in GOOD:
        mine, theirs = (nib.load(str(out / "labels" / f"{name}.nii.gz")) for out in (here, there))
        assert np.array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj))
        assert np.allclose(mine.affine, theirs.affine) and np.asarray(mine.dataobj).any()
    assert steps(remote["evaluate"]) == steps(local["evaluate"])
    # each worker loaded the model once for all three commands
    assert set(cluster.run(lambda: tasks.model_loads).values()) <= {0, 1}


def test_outputs_a_reviewer_reads(in_process, cohort_folder):
    out, reports = in_process
    embed, segment, evaluate = reports["embed"], reports["segment"], reports["evaluate"]
    assert [r.encoded for r in embed.rows if r.status == "done"] == [6, 6]
    # segment read those embeddings: no slice was encoded again
    assert {r.name: (r.status, r.encoded) for r in segment.rows} == {BROKEN: ("failed", 0), "a": ("done", 0), "b": ("done", 0)}
    with open(out / "segment.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["name"] == BROKEN and "c.nii.gz" in table[0]["error"]  # failures first, with the file named
    confidences = [float(row["min_confidence"]) for row in table[1:]]
    assert confidences == sorted(confidences)  # then the least confident volume first
    done = next(r for r in segment.rows if r.name == "a")
    assert done.slices == 6 and done.objects == 1 and 0 <= done.min_confidence <= done.mean_confidence <= 1
    assert 0 <= done.least_confident_slice < 6 and done.least_confident_object == 1
    labels = nib.load(str(out / done.labels))
    source = nib.load(str(cohort_folder / "images" / "a.nii.gz"))
    assert labels.shape == source.shape and np.allclose(labels.affine, source.affine)
    assert (out / "cases" / "a" / "confidence.csv").is_file()
    assert sorted(p.name for p in (out / "evaluation").iterdir()) == [
        "dice_per_click.png", "results.csv", "summary.csv", "summary.md"
    ]
    assert {r.case for r in evaluate.evaluation.records} == set(GOOD)
    assert len(evaluate.evaluation.records) == len(GOOD) * (CLICKS + 1)  # the start prompt, then the clicks
    assert {r.policy for r in evaluate.evaluation.records} == {"confidence"}
    assert not list(out.rglob("*.partial*"))  # nothing left half written


def test_an_embedded_volume_opens_without_encoding(in_process, cohort_folder, small_checkpoint, monkeypatch):
    out, reports = in_process
    # the session the GUI would make: the default cache, the reader's array, the same model
    # (the one the in-process run loaded, so the same signature)
    monkeypatch.setenv(CACHE_DIR_ENV, str(out / "cache"))
    model = tasks.worker_model(ModelRef(str(small_checkpoint.resolve()), IMAGE_SIZE, "cpu", "float32"))
    data = read_image(cohort_folder / "images" / "b.nii.gz")[0][0]
    session = Session(model, data)
    session.segment_frame(3, session.add_object(), FramePrompt.clicks([[31, 30]]))
    for _ in session.propagate("both"):
        pass
    assert session.frames_encoded == 0 and tasks.model_loads == 1


def test_an_interrupted_run_resumes_without_redoing_finished_volumes(in_process, cohort_folder, small_checkpoint, tmp_path):
    out, cache = tmp_path / "out", in_process[0] / "cache"  # embedded: only tracking runs here

    def stop_after_first(event):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_cohort(cohort_folder, out=out, workers=0, cache=cache, progress=stop_after_first,
                       **options(small_checkpoint))
    finished = [p.parent.name for p in out.glob("cases/*/segment.json")]
    assert finished == ["a"]
    labels = out / "labels" / "a.nii.gz"
    written = labels.stat().st_mtime_ns
    again = segment_cohort(cohort_folder, out=out, workers=0, cache=cache, **options(small_checkpoint))
    assert {r.name: r.status for r in again.rows} == {"a": "kept", "b": "done", BROKEN: "failed"}
    assert labels.stat().st_mtime_ns == written
    # a changed prompt file (a new signature) runs its volume again; --redo runs them all
    prompts = cohort_folder / "prompts" / "a.json"
    times = prompts.stat().st_atime_ns, prompts.stat().st_mtime_ns
    os.utime(prompts, ns=(times[0], times[1] + 1))
    try:
        third = segment_cohort(cohort_folder, out=out, workers=0, cache=cache, **options(small_checkpoint))
    finally:
        os.utime(prompts, ns=times)
    assert {r.name: r.status for r in third.rows} == {"a": "done", "b": "kept", BROKEN: "failed"}
    # redo runs finished volumes again (embed into the full cache: nothing to encode, quick)
    embed = lambda **redo: embed_cohort(cohort_folder, out=out, cache=cache, workers=0, **options(small_checkpoint), **redo)  # noqa: E731
    assert [r.status for r in embed().rows] == ["failed", "done", "done"]
    assert [r.status for r in embed().rows] == ["failed", "kept", "kept"]
    assert [(r.status, r.encoded) for r in embed(redo=True).rows] == [("failed", 0), ("done", 0), ("done", 0)]


def test_an_intensity_window_reaches_every_command_and_embed_and_segment_share_it(cohort_folder, small_checkpoint,
                                                                                  tmp_path):
    out, cache, window = tmp_path / "out", tmp_path / "cache", (-50.0, 150.0)
    common = {**options(small_checkpoint), "workers": 0, "cache": cache}
    embedded = embed_cohort(cohort_folder, out=out, window=window, **common)
    assert [(r.status, r.encoded) for r in embedded.rows] == [("failed", 0), ("done", SLICES), ("done", SLICES)]
    segmented = segment_cohort(cohort_folder, out=out, window=window, **common)
    assert [(r.status, r.encoded) for r in segmented.rows if r.status != "failed"] == [("done", 0), ("done", 0)]
    # without the window the same volumes are other slices to the model: their own signature, encoded again
    plain = segment_cohort(cohort_folder, out=out, **common)
    assert [(r.status, r.encoded) for r in plain.rows if r.status != "failed"] == [("done", SLICES), ("done", SLICES)]
    evaluated = evaluate_cohort(cohort_folder, out=out, clicks=0, window="ct:lung", **options(small_checkpoint),
                                workers=0)
    assert {r.protocol for r in evaluated.evaluation.records} == {"box+0clicks+window-1350to150"}
    with pytest.raises(CohortError, match="intensity window.*below low"):
        embed_cohort(cohort_folder, out=tmp_path / "bad", window=(5, 1), **common)
    assert not (tmp_path / "bad").exists()
    assert build_parser().parse_args(["embed", "x", "--model", "m", "--out", "o", "--window=-50,150"]).window == \
        IntensityWindow(-50.0, 150.0)


def test_command_line(in_process, cohort_folder, small_checkpoint, tmp_path, cluster, capsys):
    def segment(*where: str) -> list[str]:
        return ["segment", str(cohort_folder), "--model", str(small_checkpoint), "--image-size", str(IMAGE_SIZE),
                "--device", "cpu", "--dtype", "float32", "--policy", "confidence", *where,
                "--out", str(tmp_path / "out"), "--cache", str(in_process[0] / "cache")]

    assert main(segment("--scheduler", cluster.scheduler.address)) == 1  # one volume failed
    captured = capsys.readouterr()
    assert "2 done, 0 kept from an earlier run, 1 failed" in captured.out and "failed: c:" in captured.err
    with open(tmp_path / "out" / "segment.csv", newline="") as handle:
        assert [r["status"] for r in csv.DictReader(handle)] == ["failed", "done", "done"]
    assert main(segment("--workers", "0")) == 1
    assert "0 done, 2 kept" in capsys.readouterr().out
    assert main(["segment", str(cohort_folder), "--model", "no-such-model", "--out", str(tmp_path / "x")]) == 2
    assert "no-such-model" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_every_option_is_a_parameter_of_its_command():
    import inspect

    from napari_samed2 import cohort

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in {"embed": cohort.embed_cohort, "segment": cohort.segment_cohort,
                          "evaluate": cohort.evaluate_cohort}.items():
        parameters = set(inspect.signature(command).parameters) - {"progress"}
        options = {a.dest for a in commands[name]._actions if a.dest != "help"}
        assert options == parameters, name


def test_a_worker_that_dies_costs_only_its_volume(cohort_folder, small_checkpoint, tmp_path, cluster):
    model = ModelRef(str(small_checkpoint.resolve()), IMAGE_SIZE, "cpu", "float32")
    task = CohortTask("embed", model, tmp_path, tmp_path / "cache")

    def dies_on_b(volume, task):
        if volume.name == "b":
            os._exit(1)  # what the kernel's out-of-memory killer does to a worker
        return tasks.process_volume(volume, task)

    results = list(stream_on_dask(cluster, read_cohort(cohort_folder).volumes, task, function=dies_on_b))
    status = {r.row.name: (r.row.status, r.row.error) for r in results}
    assert status["a"] == ("done", "") and status[BROKEN][0] == "failed"
    assert status["b"][0] == "failed" and "died" in status["b"][1]
