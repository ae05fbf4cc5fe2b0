"""A volume whose embeddings are already on disk opens without running the image encoder:
position encodings come from the cached features' sizes, a shared folder is read but never
written, and a session made without a cache looks in the default folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_samed2.engine import EmbeddingCache, EmbeddingCacheWarning, FramePrompt, Session
from napari_samed2.engine.embedding_cache import CACHE_DIR_ENV, default_cache_dir
from napari_samed2.engine.step import position_encodings

from tests.engine.conftest import FRAMES


def click(row=30.0, col=26.0):
    return FramePrompt(np.array([[row, col]]), [1])


def segment(session: Session) -> np.ndarray:
    session.segment_frame(0, session.add_object(), click())
    list(session.propagate("forward", limits=(0, 3)))
    return session.labels()


def test_position_encodings_equal_the_encoders(small_model, array):
    session = Session(small_model, array)
    image = session.volume.model_input(0, small_model.image_size, small_model.spec.preprocessing)
    with small_model.inference():
        backbone = small_model.sam.forward_image(image[None].to(small_model.device))
        derived = position_encodings(small_model.sam, backbone["backbone_fpn"])
    assert len(derived) == len(backbone["vision_pos_enc"])
    for mine, theirs in zip(derived, backbone["vision_pos_enc"], strict=True):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)


def test_encode_fills_the_cache_and_a_later_session_encodes_nothing(small_model, array, tmp_path):
    embedder = Session(small_model, array, cache=EmbeddingCache(directory=tmp_path))
    assert list(embedder.encode()) == list(range(FRAMES))
    assert embedder.frames_encoded == FRAMES
    assert list(embedder.encode([2, 5])) == [2, 5] and embedder.frames_encoded == FRAMES  # cached: skipped
    embedder.cache.close()
    assert len(list(tmp_path.glob("*.safetensors"))) == FRAMES

    cold = segment(Session(small_model, array))
    warm = Session(small_model, array, cache=EmbeddingCache(shared=tmp_path))
    assert np.array_equal(segment(warm), cold)
    assert warm.frames_encoded == 0
    assert len(list(tmp_path.glob("*.safetensors"))) == FRAMES  # shared: read, never written
    with pytest.raises(IndexError, match="outside"):
        list(embedder.encode([FRAMES]))


def test_a_session_without_a_cache_reads_the_default_folder(small_model, array, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "embeddings"))
    assert default_cache_dir() == tmp_path / "embeddings"
    fresh = Session(small_model, array)
    segment(fresh)
    assert fresh.frames_encoded == 4  # nothing there yet, and nothing written there by it
    assert not (tmp_path / "embeddings").exists()
    embedder = Session(small_model, array, cache=EmbeddingCache(directory=default_cache_dir()))
    list(embedder.encode(range(4)))
    embedder.cache.close()
    again = Session(small_model, array)
    segment(again)
    assert again.frames_encoded == 0


def test_a_damaged_shared_file_is_recomputed_and_left_alone(small_model, array, tmp_path):
    embedder = Session(small_model, array, cache=EmbeddingCache(directory=tmp_path))
    list(embedder.encode(range(4)))
    embedder.cache.close()
    damaged = tmp_path / f"{embedder.cache_key(1)}.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:100])
    session = Session(small_model, array, cache=EmbeddingCache(shared=tmp_path))
    with pytest.warns(EmbeddingCacheWarning, match="shared embedding file"):
        segment(session)
    assert session.frames_encoded == 1 and damaged.stat().st_size == 100
