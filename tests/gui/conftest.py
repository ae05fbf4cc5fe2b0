"""GUI tests never autosave into the real user data directory."""

from __future__ import annotations

import pytest

from napari_samed2._widgets.session_files import DATA_DIR_ENV


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("user-data")
    monkeypatch.setenv(DATA_DIR_ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def no_background_encoding(monkeypatch):
    """Panels start with background encoding off: on 2 cores it would slow every GUI test and
    change the encoder counts and timings they check. tests/gui/test_background_encoding.py
    switches it on for its own panels."""
    from napari_samed2._widgets.prefetch import BackgroundEncoding

    monkeypatch.setattr(BackgroundEncoding, "on_by_default", False)
