"""Small synthetic (image, label) volumes and a fresh random-weight model per test.

Training changes a model in place, so each test that trains loads its own copy of the
session's random-weight checkpoint (about a second) instead of sharing ``tiny_model``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.conftest import TEST_DEVICE

FRAMES, HEIGHT, WIDTH = 10, 48, 56
TRAIN_SIZE = 128  # px: the model's image size in training tests (a multiple of 32)


def ellipse_pair(seed: int = 0, frames: int = FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse drifting and growing through the slices over noise, and its label
    (object 1); the object is absent from the last two slices."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    cy, cx = 20 + rng.integers(-4, 5), 22 + rng.integers(-4, 5)
    label = np.zeros((frames, HEIGHT, WIDTH), np.uint8)
    for z in range(frames - 2):
        label[z] = (((yy - cy - z) / (8.0 + z / 2)) ** 2 + ((xx - cx - z) / (10.0 + z / 3)) ** 2) < 1
    image = 150.0 * label + rng.normal(40, 20, label.shape)
    return image.astype(np.float32), label


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    """Training tests run torch on one thread (NAPARI_SAMED2_TEST_THREADS to change): on a
    machine whose other cores are busy, two OpenMP threads were measured up to 30x slower
    than one (they wait for each other), and these tests are small enough for one core."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("NAPARI_SAMED2_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pair():
    return ellipse_pair(0)


@pytest.fixture
def fresh_model(tiny_checkpoint):
    """A model of its own for a test that trains (modules are changed in place)."""
    from napari_samed2 import load_model

    return load_model(tiny_checkpoint, device=TEST_DEVICE, dtype="float32", image_size=TRAIN_SIZE)
