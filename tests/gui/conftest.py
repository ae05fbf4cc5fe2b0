"""GUI tests never autosave into the real user data directory."""

from __future__ import annotations

import pytest

from napari_samed2._widgets.session_files import DATA_DIR_ENV


@pytest.fixture(autouse=True)
def private_data_dir(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("user-data")
    monkeypatch.setenv(DATA_DIR_ENV, str(folder))
    return folder
