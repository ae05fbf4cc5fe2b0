"""Mapping one task over a cohort: in-process, on a local Dask cluster, or on an existing one.

The runner only decides what runs where and streams results back as volumes finish; the
work on a volume is :func:`~napari_samed2.cohort.tasks.process_volume`, the same function
everywhere. Volumes whose record from an earlier run still matches are kept without being
sent anywhere, so an interrupted or partly failed run is finished by running it again.

On Dask there is one task per volume. Workers run one volume at a time (one thread each)
and load the model once, on their first volume (:func:`~napari_samed2.cohort.tasks.worker_model`).
A worker that dies (killed for memory, a crash) is replaced by the nanny; its volume is
tried once more on another worker, then reported as failed, and the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from distributed.diagnostics.plugin import WorkerPlugin

from napari_samed2.cohort.cohort import Cohort, CohortVolume
from napari_samed2.cohort.tasks import CohortTask, VolumeResult, failed_result, kept_result, os_cpu_count, process_volume
from napari_samed2.errors import CohortError

# A volume is tried on this many more workers after the first one running it died: one
# retry covers a worker lost for another reason; a volume that kills every worker it
# meets (far too big for memory) costs two workers, not the scheduler's default four.
ALLOWED_FAILURES = 1
SCHEDULER_CONFIG = {
    "distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
    # One volume in flight per one-thread worker, none waiting in its queue: a volume takes
    # seconds to minutes, so queueing a second one gains nothing, keeps it from an idle
    # worker, and would count it as a suspect if its worker died running the first.
    "distributed.scheduler.worker-saturation": 1.0,
}
CONNECT_TIMEOUT_S = 30


@dataclass(frozen=True)
class CohortProgress:
    """One volume finished (or kept from an earlier run): ``done`` of ``total`` so far."""

    done: int
    total: int
    result: VolumeResult


def run_cohort(
    cohort: Cohort,
    task: CohortTask,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    redo: bool = False,
) -> Iterator[CohortProgress]:
    """Run ``task`` on every volume of ``cohort``, yielding each volume's result as it ends.

    ``workers=0`` runs the volumes one by one in this process; ``workers=N`` on a local
    Dask cluster of N worker processes; ``scheduler`` (an address such as
    ``tcp://10.0.0.5:8786``) on an existing cluster, whatever ``workers`` says. Volumes
    finished by an earlier run with the same inputs, model and settings are yielded first
    and not run again, unless ``redo``. Stopping the iteration cancels the volumes not
    started yet; finished ones keep their records.
    """
    kept, pending = [], []
    for volume in cohort:
        result = None if redo else kept_result(volume, task)
        if result is None:
            pending.append(volume)
        else:
            kept.append(result)
    total = len(cohort)
    done = 0
    for result in kept:
        done += 1
        yield CohortProgress(done, total, result)
    if not pending:
        return
    if scheduler is None and workers == 0:
        stream = (process_volume(volume, task) for volume in pending)
    else:
        stream = _on_dask(pending, task, workers, scheduler)
    for result in stream:
        done += 1
        yield CohortProgress(done, total, result)


def _on_dask(volumes: Sequence[CohortVolume], task: CohortTask, workers: int, scheduler: str | None) -> Iterator[VolumeResult]:
    with dask_client(workers, scheduler) as client:
        yield from stream_on_dask(client, volumes, task)


def stream_on_dask(
    client, volumes: Sequence[CohortVolume], task: CohortTask, function: Callable = process_volume
) -> Iterator[VolumeResult]:
    """Submit one task per volume to ``client`` and yield results in the order they finish.
    A task that fails on the cluster's side (its worker died, its record could not be
    written) becomes the volume's failed result. ``function`` is the per-volume work."""
    from distributed import as_completed

    run = uuid.uuid4().hex[:8]
    futures = [
        client.submit(function, volume, task, key=f"samed2-{task.kind}-{volume.name}-{run}", pure=False)
        for volume in volumes
    ]
    by_key = {future.key: volume for future, volume in zip(futures, volumes, strict=True)}
    try:
        for future in as_completed(futures):
            volume = by_key[future.key]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - reported for this volume; the others go on
                result = failed_result(volume, task, _cluster_failure(exc))
            future.release()
            yield result
    finally:
        client.cancel([f for f in futures if not f.done()])


def _cluster_failure(exc: BaseException) -> str:
    if type(exc).__name__ == "KilledWorker":
        return (
            f"the worker processing it died, on {ALLOWED_FAILURES + 1} workers in turn (killed for using too much "
            "memory, or crashed): run it alone with --workers 1, or with fewer workers per machine"
        )
    return f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None = None) -> Iterator:
    """A Dask client: on the cluster at ``scheduler``, or on a new ``LocalCluster`` of
    ``workers`` processes with one thread each (a volume at a time per worker; the CPUs
    shared out between workers for PyTorch), closed again at the end."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise CohortError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}): start it with `dask scheduler` and "
                "workers with `dask worker ADDRESS --nthreads 1`, or leave out --scheduler to run on this machine"
            ) from None
        with client:
            yield client
        return
    if workers < 1:
        raise CohortError(f"a local cluster needs at least one worker, not {workers}; --workers 0 runs in-process")
    with dask.config.set(SCHEDULER_CONFIG):
        cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    try:
        with Client(cluster) as client:
            client.register_plugin(TorchThreads(max(1, os_cpu_count() // workers)), name="samed2-torch-threads")
            yield client
    finally:
        cluster.close()


class TorchThreads(WorkerPlugin):
    """Give PyTorch in each local worker its share of the CPUs. Dask starts workers with
    one OpenMP thread (``OMP_NUM_THREADS=1``), which would leave cores idle with fewer
    workers than cores; the plugin also runs on a worker that replaces a dead one."""

    def __init__(self, threads: int):
        self.threads = threads

    def setup(self, worker) -> None:
        import torch

        torch.set_num_threads(self.threads)
