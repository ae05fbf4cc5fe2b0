"""Cohort throughput: volumes per minute for ``cohort embed`` and ``cohort segment`` with
0 (in-process), 1 and 2 Dask workers, and the memory each worker process peaks at.

    python benchmarks/bench_cohort.py                                  # 6 volumes of 16x192x192, 256 px
    python benchmarks/bench_cohort.py --volumes 4 --slices 8 --out /tmp/cohort.md   # quick
    python benchmarks/bench_cohort.py --workers 0 1 2 4 --size 512 --device cuda

A synthetic cohort (NIfTI volumes, one object each with a box prompt file) and a
random-weight checkpoint in the real SAM 2.1 architecture (tiny unless ``--model`` says
otherwise) are written to a temporary folder: speed and memory depend on the architecture and
image size, not on the weight values. For every worker count the cluster is started first
(its start-up is reported apart), then embed runs into an empty cache and segment runs on the
embedded cohort (so it encodes nothing), each timed from submission to the last volume.
Memory per worker is each worker process's peak resident set size, read from the workers
at the end; for ``0`` it is this process's.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_cohort(folder: Path, volumes: int, slices: int, size: int) -> Path:
    """``images/`` + ``prompts/``: an ellipse drifting through noisy slices, a box on slice 0."""
    import nibabel as nib

    (folder / "images").mkdir(parents=True)
    (folder / "prompts").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for v in range(volumes):
        rng = np.random.default_rng(v)
        cy, cx = size * (0.35 + 0.05 * (v % 3)), size * 0.3
        frames = []
        for z in range(slices):
            shift = z * size * 0.3 / slices
            inside = ((yy - cy) / (size * 0.15)) ** 2 + ((xx - cx - shift) / (size * 0.2)) ** 2 < 1
            frames.append(200.0 * inside + 30 * np.sin(xx / 9.0) + rng.normal(0, 15, (size, size)))
        zyx = np.stack(frames).astype(np.float32)
        xyz = np.ascontiguousarray(zyx[:, ::-1, ::-1].transpose(2, 1, 0))
        nib.save(nib.Nifti1Image(xyz, np.diag([1.0, 1.0, 2.0, 1.0])), str(folder / "images" / f"v{v:03d}.nii.gz"))
        box = [cy - size * 0.15, cx - size * 0.2, cy + size * 0.15, cx + size * 0.2]
        prompts = {"format": "napari-samed2-prompts", "version": 1, "objects": {"1": {"0": {"box": box}}}}
        (folder / "prompts" / f"v{v:03d}.json").write_text(json.dumps(prompts))
    return folder


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: Linux's VmHWM, the high-water mark of its
    own address space. Not ``ru_maxrss``: a worker started by spawn (fork, then exec) keeps
    its parent's peak at that moment there, which hid the workers' own peaks."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, a bound from above


def run(workers: int, cohort: Path, work: Path, model: dict) -> dict:
    """embed then segment on ``workers`` workers; times, failures and peak memory."""
    from napari_samed2.cohort import embed_cohort, segment_cohort
    from napari_samed2.cohort.runner import dask_client

    out, cache = work / f"out-{workers}", work / f"cache-{workers}"
    import torch

    result: dict = {"workers": workers, "threads": torch.get_num_threads()}
    start = time.perf_counter()
    with (dask_client(workers) if workers else _nothing()) as client:
        where = {"scheduler": client.scheduler.address} if client is not None else {"workers": 0}
        result["startup_s"] = time.perf_counter() - start
        for name, command, extra in (("embed", embed_cohort, {}), ("segment", segment_cohort, {"policy": "stock"})):
            began = time.perf_counter()
            report = command(cohort, out=out, cache=cache, **model, **where, **extra)
            seconds = time.perf_counter() - began
            result[f"{name}_s"] = seconds
            result[f"{name}_per_min"] = len(report.results) / seconds * 60
            result[f"{name}_failed"] = report.count("failed")
            if name == "segment":
                result["segment_encoded"] = sum(r.row.encoded for r in report.results)
        if client is not None:
            result["worker_peak_mb"] = sorted(client.run(peak_rss_mb).values())
        else:
            result["worker_peak_mb"] = [peak_rss_mb()]
    return result


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    import torch

    lines = [
        f"`python benchmarks/bench_cohort.py --volumes {args.volumes} --slices {args.slices} --frame {args.frame} "
        f"--size {args.size} --workers {' '.join(map(str, args.workers))}"
        f"{'' if args.threads is None else f' --threads {args.threads}'}` on {platform.machine()} with "
        f"{_cpus()} CPU cores, torch {torch.__version__}, {args.model} with random weights at {args.size} px, "
        f"{args.device}; {args.volumes} NIfTI volumes of {args.slices}x{args.frame}x{args.frame}, one object each "
        "(a box on slice 0).",
        "",
        "| workers | cluster start (s) | embed (s) | embed volumes/min | segment (s) | segment volumes/min | "
        "slices re-encoded by segment | peak RSS per worker (MiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        label = f"0 (in-process, {r['threads']} threads)" if r["workers"] == 0 else str(r["workers"])
        lines.append(
            f"| {label} | {r['startup_s']:.1f} | {r['embed_s']:.1f} | {r['embed_per_min']:.2f} | {r['segment_s']:.1f} | "
            f"{r['segment_per_min']:.2f} | {r['segment_encoded']} | {', '.join(f'{m:.0f}' for m in r['worker_peak_mb'])} |"
        )
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    from napari_samed2.cohort.tasks import os_cpu_count

    return os_cpu_count()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=6)
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--frame", type=int, default=192, help="rows and columns of each slice")
    parser.add_argument("--size", type=int, default=256, help="model image size in px")
    parser.add_argument("--model", default="sam2.1-tiny", help="architecture of the random-weight checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads of the in-process run (default: PyTorch's own, every core)")
    parser.add_argument("--out", default=None, help="write the Markdown table here (default: print it)")
    parser.add_argument("--json", default=None, help="also write the raw numbers as JSON here")
    args = parser.parse_args(argv)

    import torch

    from napari_samed2.models.random_weights import save_random_checkpoint

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="samed2-bench-cohort-"))
    try:
        checkpoint = save_random_checkpoint(work / f"random_{args.model}.pt", args.model, image_size=args.size)
        cohort = synthetic_cohort(work / "cohort", args.volumes, args.slices, args.frame)
        model = {"model": checkpoint, "image_size": args.size, "device": args.device, "dtype": "float32"}
        results = []
        for workers in args.workers:
            results.append(run(workers, cohort, work, model))
            print(json.dumps(results[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown(results, args)
    if args.out:
        Path(args.out).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
