"""Soak: one click, then a long propagation; resident memory and the embedding cache's disk tier as it goes.

    .venv/bin/python benchmarks/bench_soak.py --frames 600 --size 1024

A random-weight SAM 2.1 tiny (the architecture's real sizes; nothing to download) tracks one
object from a click on the first slice through every slice of a synthetic volume, with the
engine's defaults (stock policy, an embedding cache of 256 MiB in memory that spills to a
temporary folder). Every ``--every`` slices it records the process's resident memory and the
size of the cache's folder, then checks the folder is gone once the cache is closed. The
figures replace the "Soak" section of ``--out`` (docs/benchmarks.md); nothing else there changes.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from bench_engine import FRAME_SHAPE, replace_section, rss_bytes, synthetic_volume

SECTION = "## Soak"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*") if p.is_file()) if folder.exists() else 0


def soak(frames: int, size: int, every: int, device: str) -> tuple[list[dict], dict]:
    from napari_samed2 import load_model
    from napari_samed2.engine import FramePrompt, Session
    from napari_samed2.models.random_weights import save_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_random_checkpoint(Path(tmp) / "tiny.pt", "sam2.1-tiny", image_size=size)
        model = load_model(checkpoint, device=device, dtype="float32", image_size=size)
    volume = synthetic_volume(frames)
    session = Session(model, volume)
    folder = session.cache.directory
    rows = [{"slices": 0, "rss_mb": rss_bytes() / 2**20, "disk_mb": 0.0, "seconds": 0.0}]
    start = time.perf_counter()
    session.segment_frame(0, session.add_object(), FramePrompt(np.array([[110.0, 100.0]]), [1]))
    for result in session.propagate("forward"):
        slices = result.frame + 1
        if slices % every == 0 or slices == frames:
            rows.append({"slices": slices, "rss_mb": rss_bytes() / 2**20,
                         "disk_mb": folder_bytes(folder) / 2**20, "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
    session.cache.close()
    closed = {"folder_left": folder.exists(), "disk_mb_after_close": folder_bytes(folder) / 2**20,
              "memory_hits": session.cache.stats.memory_hits, "disk_hits": session.cache.stats.disk_hits,
              "frames_encoded": session.frames_encoded}
    return rows, closed


def report(rows: list[dict], closed: dict, args) -> str:
    growth = [(b["rss_mb"] - a["rss_mb"]) / (b["slices"] - a["slices"]) for a, b in zip(rows[1:], rows[2:])]
    disk = rows[-1]["disk_mb"] / rows[-1]["slices"]
    lines = [
        SECTION,
        "",
        f"`python benchmarks/bench_soak.py --frames {args.frames} --size {args.size}` on {date.today()}: "
        f"{platform.machine()}, {torch.get_num_threads()} PyTorch thread(s), torch {torch.__version__}, {args.device}; "
        f"SAM 2.1 tiny with random weights at {args.size} px in float32, a {args.frames}x{FRAME_SHAPE[0]}x"
        f"{FRAME_SHAPE[1]} synthetic volume, one click on slice 0, propagated forward with the engine's defaults "
        "(stock policy; embedding cache: 256 MiB in memory, the rest in a temporary folder).",
        "",
        "| slices done | RSS (MiB) | cache folder (MiB) | seconds |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {r['slices']} | {r['rss_mb']:.0f} | {r['disk_mb']:.0f} | {r['seconds']:.0f} |" for r in rows),
        "",
        f"- RSS stayed between {min(r['rss_mb'] for r in rows[1:]):.0f} and {max(r['rss_mb'] for r in rows[1:]):.0f} MiB "
        f"from slice {rows[1]['slices']} on, ending {rows[-1]['rss_mb'] - rows[1]['rss_mb']:+.0f} MiB from where it was "
        f"then ({np.mean(growth):+.2f} MiB a slice on average): bounded. It swings by up to "
        f"{max(abs(g) for g in growth) * (rows[2]['slices'] - rows[1]['slices']):.0f} MiB between readings as the "
        "allocator takes and returns freed activations; the memory bank keeps a fixed number of frames' memories "
        "and the cache's memory tier is capped.",
        f"- The disk tier grew by {disk:.2f} MiB a slice (the image features that did not fit in memory); "
        f"after closing, the folder {'was left behind' if closed['folder_left'] else 'was removed'} "
        f"({closed['disk_mb_after_close']:.0f} MiB left). Slices encoded: {closed['frames_encoded']}.",
        *([f"- {args.note}"] if args.note else []),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--note", default="", help="a line about the run's conditions, added to the report")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    args = parser.parse_args()
    rows, closed = soak(args.frames, args.size, args.every, args.device)
    replace_section(args.out, report(rows, closed, args), SECTION)
    print(f"wrote the Soak section of {args.out}")


if __name__ == "__main__":
    main()
