"""Shared fixtures: small random-weight checkpoints built from the real sam2 architectures.

Nothing here touches the network; the checkpoints are written once per test session and
loaded back through the public ``load_model`` path.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_IMAGE_SIZE = 256
# The suite runs on CPU; NAPARI_SAMED2_TEST_DEVICE=cuda runs the same model tests (the oracle
# included) on a GPU, in float32 so the comparison with stock stays exact.
TEST_DEVICE = os.environ.get("NAPARI_SAMED2_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session", autouse=True)
def private_embeddings_folder(tmp_path_factory):
    """Sessions read precomputed embeddings from the user's cache folder and the cohort
    commands write there: the tests use a folder of their own (cohort workers inherit it)."""
    from napari_samed2.engine.embedding_cache import CACHE_DIR_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(tmp_path_factory.mktemp("embeddings")))
        yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from napari_samed2.models.random_weights import save_random_checkpoint

    path = tmp_path_factory.mktemp("weights") / "random_sam2.1_tiny.pt"
    return save_random_checkpoint(path, "sam2.1-tiny", image_size=TEST_IMAGE_SIZE, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from napari_samed2 import load_model

    return load_model(tiny_checkpoint, device=TEST_DEVICE, dtype="float32", image_size=TEST_IMAGE_SIZE)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """The demo architecture (4 M parameters) with random weights: a frame costs a quarter of
    the tiny model's, for the tests of behaviour that no architecture changes (the oracle and
    the loading tests keep the real sam2 architectures)."""
    from napari_samed2.models.random_weights import save_random_checkpoint

    path = tmp_path_factory.mktemp("weights") / "random_demo.pt"
    return save_random_checkpoint(path, "demo", image_size=TEST_IMAGE_SIZE, seed=0)


@pytest.fixture(scope="session")
def small_model(small_checkpoint):
    from napari_samed2 import load_model

    return load_model(small_checkpoint, device=TEST_DEVICE, dtype="float32", image_size=TEST_IMAGE_SIZE)


@pytest.fixture
def shared_data() -> Path:
    """The real MR volumes beside the repo; tests that need them skip on a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real volumes not available ({SHARED_DATA} is absent)")
    return SHARED_DATA
