"""Checkpoint files that are not what they claim: each message names the problem (code that was
refused, a text file, a damaged download) and what to do, not the opcode or key torch hit."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file

from napari_samed2.engine.library import MemoryLibrary
from napari_samed2.errors import CheckpointError
from napari_samed2.models.checkpoint import read_state_dict


class Payload:
    """Unpickling this writes a marker file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def torch_bytes(obj, legacy=False) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def code_files(marker) -> dict[str, bytes]:
    payload = {"model": Payload(marker)}
    files = {f"pickle protocol {n}": pickle.dumps(payload, protocol=n) for n in (0, 2, 4, 5)}
    files["torch.save"] = torch_bytes(payload)
    files["legacy torch.save"] = torch_bytes(payload, legacy=True)
    return files


@pytest.mark.parametrize("kind", ["pickle protocol 0", "pickle protocol 2", "pickle protocol 4",
                                  "pickle protocol 5", "torch.save", "legacy torch.save"])
def test_pickled_code_is_named_as_refused_code_and_never_runs(tmp_path, kind):
    marker = tmp_path / "code ran"
    path = tmp_path / "weights.pt"
    path.write_bytes(code_files(marker)[kind])
    with pytest.raises(CheckpointError, match="holds pickled Python code .*exec.*refused, not run.*weights_only=True.*"
                                               "If you trust the file's source, re-save it"):
        read_state_dict(path)
    assert not marker.exists()


def test_objects_beyond_tensors_are_named(tmp_path):
    import numpy as np

    path = tmp_path / "with_numpy.pt"
    path.write_bytes(torch_bytes({"model": {"w": torch.zeros(2)}, "best_dice": np.float64(0.8)}))
    with pytest.raises(CheckpointError, match="code or objects beyond tensors \\(numpy.*re-save it as a plain state dict"):
        read_state_dict(path)


def zipped_without_data() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"")
    return buffer.getvalue()


GOOD = torch_bytes({"w": torch.arange(1000.0)})
GOOD_LEGACY = torch_bytes({"w": torch.arange(1000.0)}, legacy=True)

NOT_CHECKPOINTS = {
    "text": (b"hello, these are not weights\n" * 20, "a text file \\(it starts 'hello, these are not weights'\\).*Download"),
    "one word": (b"e" * 100, "a text file"),
    "an error page": (b"<html><body>404 Not Found</body></html>", "a text file.*error page"),
    "a Git LFS pointer": (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 155000000\n", "Git LFS pointer.*git lfs pull"
    ),
    "truncated": (GOOD[: len(GOOD) // 2], "truncated or corrupted. Download or copy it again"),
    "truncated legacy": (GOOD_LEGACY[: len(GOOD_LEGACY) // 2], "truncated or corrupted"),
    "first bytes only": (GOOD[:10], "truncated or corrupted"),
    "an archive without data": (zipped_without_data(), "truncated or corrupted"),
    "zeros": (bytes(4096), "truncated or corrupted"),
    "a plain pickle": (pickle.dumps({"w": [1.0, 2.0]}, protocol=4), "a Python pickle that torch.save did not write.*torch.save\\(state_dict"),
    "an empty state dict": (torch_bytes({}), "empty state dict, so no weights"),
    "an empty model entry": (torch_bytes({"model": {}}), "empty state dict"),
    "a tensor": (torch_bytes(torch.zeros(3)), "not contain a state dict .* but a Tensor.*torch.save\\(\\{'model'"),
    "a list": (torch_bytes([torch.zeros(3)]), "but a list"),
}


@pytest.mark.parametrize("content, message", NOT_CHECKPOINTS.values(), ids=NOT_CHECKPOINTS.keys())
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, content, message, suffix):
    path = tmp_path / f"sam2_weights{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        read_state_dict(path)
    text = str(info.value)
    assert "Weights only load failed" not in text and "Unsupported" not in text and len(text) < 500


def test_safetensors_without_tensors_and_folders_are_named(tmp_path):
    save_file({}, str(tmp_path / "empty.safetensors"))
    with pytest.raises(CheckpointError, match="holds no tensors, so no weights"):
        read_state_dict(tmp_path / "empty.safetensors")
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file: pass the .pt"):
        read_state_dict(tmp_path / "model.pt")


def test_a_memory_bank_with_code_says_so(tmp_path):
    marker = tmp_path / "code ran"
    path = tmp_path / "memory_bank_list_640.pkl"
    path.write_bytes(pickle.dumps([Payload(marker)], protocol=4))
    with pytest.raises(CheckpointError, match="was refused: it holds pickled Python code .*exec.*memory bank file"):
        MemoryLibrary.import_samed2_bank(path)
    assert not marker.exists()
