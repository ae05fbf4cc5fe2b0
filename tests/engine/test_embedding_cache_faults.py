"""The embedding cache's disk is optional: a folder that fails or a damaged file costs a
warning and some re-encoding, never a stopped session or a different mask."""

from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_samed2.engine import EmbeddingCache, EmbeddingCacheWarning, FramePrompt, Session

FEATURES = [torch.arange(12.0).reshape(3, 4), torch.ones(2, 2)]
LIMITS = (0, 5)  # six frames are enough to spill, fail and read back


def click(row=30.0, col=30.0):
    return FramePrompt(np.array([[row, col]]), [1])


def masks(results) -> dict[int, np.ndarray]:
    return {r.frame: r.objects[1].mask for r in results}


def refuse_writes(monkeypatch, code: int) -> None:
    """Make every write of a cache file fail as the OS would with ``code``."""
    def save(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("safetensors.torch.save_file", save)


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def write_other_keys(path):
    save_file({"weights": torch.zeros(2)}, str(path))


def write_gapped_keys(path):
    save_file({"0": torch.zeros(2), "2": torch.zeros(2)}, str(path))


def replace_with_folder(path):
    path.unlink()
    path.mkdir()


DAMAGE = {
    "truncated": truncate,
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("not a tensor file\n"),
    "other keys": write_other_keys,
    "keys with a gap": write_gapped_keys,
    "a folder": replace_with_folder,
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_file_is_dropped_and_reported_once(tmp_path, damage):
    earlier = EmbeddingCache(directory=tmp_path)
    earlier.put("a", FEATURES)
    earlier.put("b", FEATURES)
    earlier.close()
    damage(tmp_path / "a.safetensors")
    damage(tmp_path / "b.safetensors")
    cache = EmbeddingCache(directory=tmp_path)
    with pytest.warns(EmbeddingCacheWarning, match="a.safetensors.*does not read back.*recomputes") as caught:
        assert cache.get("a") is None
        assert cache.get("b") is None
    assert len(caught) == 1 and cache.stats.misses == 2
    assert damage is replace_with_folder or not (tmp_path / "a.safetensors").exists()
    if damage is not replace_with_folder:  # the recomputed features take the file's place
        cache.put("a", FEATURES)
        again = EmbeddingCache(directory=tmp_path)
        assert all(torch.equal(x, y) for x, y in zip(again.get("a"), FEATURES)) and again.stats.disk_hits == 1


FAILURES = {
    "disk full": errno.ENOSPC,
    "read-only folder": errno.EROFS,
    "no permission": errno.EACCES,
    "i/o error": errno.EIO,
}


@pytest.mark.parametrize("background", [False, True], ids=["written at once", "written by a thread"])
@pytest.mark.parametrize("code", FAILURES.values(), ids=FAILURES.keys())
def test_a_failing_disk_switches_writing_off_with_one_warning(tmp_path, monkeypatch, code, background):
    refuse_writes(monkeypatch, code)
    cache = EmbeddingCache(memory_bytes=1, directory=tmp_path, background_writes=background)
    with pytest.warns(EmbeddingCacheWarning, match=f"cannot write to .*{os.strerror(code)}.*memory only") as caught:
        for i in range(6):
            cache.put(f"frame{i}", FEATURES)
        cache.flush()
    assert len(caught) == 1 and cache.write_error is not None
    assert torch.equal(cache.get("frame5")[0], FEATURES[0])  # the newest stays in memory
    assert cache.get("frame0") is None  # evicted and not on disk: the session re-encodes it
    assert not list(tmp_path.iterdir())  # no partial files left behind
    cache.close()


def test_a_folder_that_cannot_be_created_leaves_a_memory_cache(tmp_path):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    with pytest.warns(EmbeddingCacheWarning, match="cannot write to"):
        cache = EmbeddingCache(directory=blocker / "embeddings")
    cache.put("a", FEATURES)
    assert cache.get("a") is FEATURES
    cache.close()


def test_a_deleted_temporary_folder_does_not_break_close(tmp_path):
    cache = EmbeddingCache(memory_bytes=1)
    shutil.rmtree(cache.directory)
    with pytest.warns(EmbeddingCacheWarning, match="No such file or directory"):
        cache.put("a", FEATURES)
        cache.put("b", FEATURES)
    cache.close()


@pytest.fixture(scope="module")
def reference(small_model, array) -> dict[int, np.ndarray]:
    """Masks of a propagation whose cache never fails."""
    session = Session(small_model, array)
    session.segment_frame(0, session.add_object(), click(30, 26))
    return masks(session.propagate("forward", limits=LIMITS))


def delete_folder(cache, _monkeypatch):
    shutil.rmtree(cache.directory)


def fill_disk(_cache, monkeypatch):
    refuse_writes(monkeypatch, errno.ENOSPC)


def make_read_only(_cache, monkeypatch):
    refuse_writes(monkeypatch, errno.EROFS)


@pytest.mark.parametrize("fail", [delete_folder, fill_disk, make_read_only])
def test_a_session_keeps_propagating_when_the_disk_fails_mid_run(small_model, array, tmp_path, monkeypatch, reference, fail):
    cache = EmbeddingCache(memory_bytes=1, directory=tmp_path / "embeddings")  # every frame goes to disk
    session = Session(small_model, array, cache=cache)
    obj = session.add_object()
    session.segment_frame(0, obj, click(30, 26))
    run = session.propagate("forward", limits=LIMITS)
    done = [next(run), next(run)]
    fail(cache, monkeypatch)
    with pytest.warns(EmbeddingCacheWarning, match="cannot write"):
        done += list(run)
    got = masks(done)
    assert got.keys() == reference.keys() and all(np.array_equal(got[f], reference[f]) for f in got)
    # and it can propagate again: frames no longer cached are re-encoded, with the same masks
    again = masks(session.propagate("forward", limits=LIMITS))
    assert all(np.array_equal(again[f], reference[f]) for f in reference)


def test_a_truncated_file_from_an_earlier_run_is_recomputed(small_model, array, tmp_path, reference):
    folder = tmp_path / "embeddings"
    earlier = Session(small_model, array, cache=EmbeddingCache(directory=folder))
    earlier.segment_frame(0, earlier.add_object(), click(30, 26))
    list(earlier.propagate("forward", limits=LIMITS))
    earlier.cache.close()
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == LIMITS[1] + 1
    truncate(files[3])  # the frame written fourth: frame 3

    session = Session(small_model, array, cache=EmbeddingCache(directory=folder))
    session.segment_frame(0, session.add_object(), click(30, 26))
    with pytest.warns(EmbeddingCacheWarning, match="does not read back"):
        got = masks(session.propagate("forward", limits=LIMITS))
    assert all(np.array_equal(got[f], reference[f]) for f in reference)
    # only frame 3, for its damaged file
    assert session.frames_encoded == 1
    later = Session(small_model, array, cache=EmbeddingCache(directory=folder))
    later.segment_frame(3, later.add_object(), click(30, 32))
    assert later.cache.stats.disk_hits == 1  # the file was written again, whole
