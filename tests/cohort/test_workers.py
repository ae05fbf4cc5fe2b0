"""Which GPU a worker takes, without a GPU: local workers 0, 1, 2... take GPUs 0, 1, 0...;
an explicit device, one GPU or a worker not named by a number keep what was asked."""

from __future__ import annotations

import pytest
import torch

from napari_samed2.cohort import tasks


@pytest.mark.parametrize(("gpus", "worker", "requested", "device"), [
    (2, "0", "auto", "cuda:0"),
    (2, "1", "auto", "cuda:1"),
    (2, "2", "auto", "cuda:0"),
    (2, "tcp://10.0.0.5:40001", "auto", "auto"),  # a cluster's worker: it sees the GPU it was given
    (1, "1", "auto", "auto"),
    (0, "1", "auto", "auto"),
    (2, "1", "cpu", "cpu"),
])
def test_local_workers_take_a_gpu_each(monkeypatch, gpus, worker, requested, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(tasks, "worker_name", lambda: worker)
    assert tasks.worker_device(requested) == device


def test_in_process_the_worker_is_local():
    assert tasks.worker_name() == "local"
