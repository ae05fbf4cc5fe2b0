"""Saved sessions and memory libraries: a damaged or mismatched folder is named with what to do,
and a save that fails leaves the earlier save as it was."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_samed2.engine import FramePrompt, Session
from napari_samed2.engine.library import LibraryEntry, MemoryLibrary
from napari_samed2.errors import OutputFolderError, SavedStateError, VolumeError


def library_of(n: int) -> MemoryLibrary:
    library = MemoryLibrary(capacity=4)
    for i in range(n):
        library.add(LibraryEntry(torch.full((1, 64, 4, 4), float(i), dtype=torch.bfloat16),
                                 torch.tensor([1.0, float(i)], dtype=torch.float16), 0.5 + i / 10, f"case {i}"))
    return library


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_json(name: str, change):
    def edit(folder: Path) -> None:
        document = json.loads((folder / name).read_text())
        change(document)
        (folder / name).write_text(json.dumps(document))
    return edit


def drop_tensor(name: str, key: str):
    def edit(folder: Path) -> None:
        tensors = load_file(str(folder / name))
        del tensors[key]
        save_file(tensors, str(folder / name))
    return edit


def other_save(folder: Path) -> None:
    """The tensors of a different save beside this index (as after an interrupted copy)."""
    library_of(3).save(folder.parent / "other")
    shutil.copy(folder.parent / "other" / "entries.safetensors", folder / "entries.safetensors")


LIBRARY_DAMAGE = {
    "no index": (lambda f: (f / "index.json").unlink(), "not a saved memory library: index.json is missing"),
    "no tensors": (lambda f: (f / "entries.safetensors").unlink(), "entries.safetensors is missing"),
    "no folder": (lambda f: shutil.rmtree(f), "index.json and entries.safetensors are missing"),
    "truncated index": (lambda f: truncate(f / "index.json"), "index.json cannot be read .*truncated or was edited"),
    "binary index": (lambda f: (f / "index.json").write_bytes(b"\xff\xfe\x00"), "index.json cannot be read"),
    "index is a list": (lambda f: (f / "index.json").write_text("[]"), "index.json cannot be read \\(no capacity, entries\\)"),
    "index without capacity": (edit_json("index.json", lambda d: d.pop("capacity")), "\\(no capacity\\)"),
    "truncated tensors": (lambda f: truncate(f / "entries.safetensors"), "entries.safetensors cannot be read"),
    "tensors of another save": (other_save, "inconsistent .*2 entries listed, 6 tensors stored.*not from the same save"),
    "a tensor missing": (drop_tensor("entries.safetensors", "1.maskmem"), "inconsistent"),
    "an unknown field": (edit_json("index.json", lambda d: d["entries"][0].update(colour="red")), "inconsistent.*colour"),
    "capacity zero": (edit_json("index.json", lambda d: d.update(capacity=0)), "inconsistent.*room for at least one"),
    "more entries than room": (edit_json("index.json", lambda d: d.update(capacity=1)), "inconsistent.*capacity 1"),
}


@pytest.mark.parametrize("damage, message", LIBRARY_DAMAGE.values(), ids=LIBRARY_DAMAGE.keys())
def test_a_damaged_library_folder_is_named(tmp_path, damage, message):
    folder = library_of(2).save(tmp_path / "library")
    damage(folder)
    with pytest.raises(SavedStateError, match=message) as info:
        MemoryLibrary.load(folder)
    assert "library" in str(info.value)


def fail_writing(monkeypatch, which: str) -> None:
    """Disk full while writing the temporary file of ``which`` ("json" or "tensors")."""
    method = "write_text" if which == "json" else "write_bytes"
    original = getattr(Path, method)

    def write(self, data, *args, **kwargs):
        if ".partial." in self.name:
            original(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return original(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, method, write)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("which", ["tensors", "json"])
def test_a_failed_library_save_keeps_the_earlier_one(tmp_path, monkeypatch, which):
    folder = library_of(2).save(tmp_path / "library")
    before = snapshot(folder)
    fail_writing(monkeypatch, which)
    name = "index.json" if which == "json" else "entries.safetensors"
    with pytest.raises(OutputFolderError, match=f"{name} \\(No space left on device\\); the earlier {name} is unchanged") as info:
        library_of(3).save(folder)
    assert ".partial" not in str(info.value)
    monkeypatch.undo()
    assert snapshot(folder) == before
    assert [e.label for e in MemoryLibrary.load(folder).entries] == ["case 0", "case 1"]


def test_a_library_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "a file").write_text("")
    with pytest.raises(OutputFolderError, match="cannot create the folder .*a file/library"):
        library_of(1).save(tmp_path / "a file" / "library")


# sessions --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(small_model, array, tmp_path_factory) -> Path:
    session = Session(small_model, array)
    obj = session.add_object()
    session.segment_frame(0, obj, FramePrompt(np.array([[30.0, 26.0]]), [1]))
    list(session.propagate("forward", limits=(0, 3)))
    return session.save(tmp_path_factory.mktemp("saved") / "case")


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "case"))


SESSION_DAMAGE = {
    "no session.json": (lambda f: (f / "session.json").unlink(), "not a saved session: session.json is missing"),
    "truncated tensors": (lambda f: truncate(f / "tensors.safetensors"), "tensors.safetensors cannot be read .*truncated"),
    "truncated json": (lambda f: truncate(f / "session.json"), "session.json cannot be read"),
    "json without objects": (edit_json("session.json", lambda d: d.pop("objects")), "\\(no objects\\)"),
    "a mask missing": (drop_tensor("tensors.safetensors", "1.2.low_res_logits"), "inconsistent .*1.2.low_res_logits"),
    "an entry without its frame": (
        edit_json("session.json", lambda d: d["objects"]["1"]["entries"][0].pop("frame")), "inconsistent"
    ),
    "an object id that is not one": (
        edit_json("session.json", lambda d: d["objects"].update({"0": d["objects"].pop("1")})), "inconsistent"
    ),
    "an unknown status": (
        edit_json("session.json", lambda d: d["objects"]["1"]["entries"][0].update(status="maybe")), "inconsistent.*maybe"
    ),
    "an unknown policy": (edit_json("session.json", lambda d: d.update(policy="smart")), "inconsistent.*smart"),
    "another model": (edit_json("session.json", lambda d: d.update(model="0" * 24)), "another model .*load that model"),
}


@pytest.mark.parametrize("damage, message", SESSION_DAMAGE.values(), ids=SESSION_DAMAGE.keys())
def test_a_damaged_saved_session_is_named(small_model, array, copy, damage, message):
    damage(copy)
    with pytest.raises(SavedStateError, match=message):
        Session.load(copy, small_model, array)


def test_a_session_saved_for_another_volume_is_still_a_volume_error(small_model, array, copy):
    with pytest.raises(VolumeError, match="different volume"):
        Session.load(copy, small_model, array[::-1].copy())


@pytest.mark.parametrize("which", ["tensors", "json"])
def test_a_failed_session_save_keeps_the_earlier_one(small_model, array, copy, monkeypatch, which):
    before = snapshot(copy)
    session = Session.load(copy, small_model, array)
    session.segment_frame(5, session.add_object(), FramePrompt(np.array([[30.0, 36.0]]), [1]))
    fail_writing(monkeypatch, which)
    with pytest.raises(OutputFolderError, match="No space left on device.*unchanged"):
        session.save(copy)
    monkeypatch.undo()
    assert snapshot(copy) == before
    assert Session.load(copy, small_model, array).object_ids == [1]
    assert session.save(copy) and Session.load(copy, small_model, array).object_ids == [1, 2]
