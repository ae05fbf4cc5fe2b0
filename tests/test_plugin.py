"""The npe2 manifest is valid and napari discovers the installed plugin and its contributions."""

import subprocess
import sys
from pathlib import Path

import napari_samed2

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_validates_with_imports():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-samed2", "--imports"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout.lower()


def test_manifest_shipped_in_the_package_is_the_root_one():
    shipped = Path(napari_samed2.__file__).with_name("napari.yaml")
    assert shipped.read_text() == (ROOT / "napari.yaml").read_text()


def test_npe2_discovers_the_plugin_and_its_widgets():
    from npe2 import PluginManager

    manager = PluginManager()
    manager.discover()
    assert "napari-samed2" in manager._manifests
    manifest = manager.get_manifest("napari-samed2")
    widget_names = {w.display_name for w in manifest.contributions.widgets}
    assert "Model" in widget_names
    for widget in manifest.contributions.widgets:
        command = manager.get_command(widget.command)
        assert callable(command.exec) or command.python_name
