"""The benchmark command still runs, and its report aggregates repeated runs honestly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engine.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_engine", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(impl: str, repeat: int, correction_s: float, first_s: float = 2.0) -> dict:
    return {"impl": impl, "frames": 8, "repeat": repeat, "first_s": first_s, "s_per_frame": first_s / 8,
            "correction_s": correction_s, "peak_rss_mb": 100.0, "rss_added_mb": 10.0}


def test_medians_and_paired_ratio_ranges():
    bench = _load_script()
    runs = [
        _run("stock", 0, 10.0), _run("ours (stock)", 0, 2.0),
        _run("stock", 1, 12.0), _run("ours (stock)", 1, 4.0),
        _run("stock", 2, 11.0), _run("ours (stock)", 2, 2.5),
    ]
    rows = bench.medians(runs)
    assert [(r["impl"], r["runs"]) for r in rows] == [("stock", 3), ("ours (stock)", 3)]
    assert rows[0]["correction_s"] == 11.0 and rows[1]["correction_s"] == 2.5
    # ratios pair each run of ours with stock's run of the same repeat: 10/2, 12/4, 11/2.5
    assert bench.ratio_range(runs, rows[1], "correction_s", 1) == " (3.0-5.0x over 3 runs)"
    assert bench.ratio_range(runs[:2], bench.medians(runs[:2])[1], "correction_s", 1) == ""


@pytest.mark.slow
def test_benchmark_command_runs_stock_and_ours_side_by_side(tmp_path, monkeypatch):
    out = tmp_path / "bench.md"
    env = os.environ | {"TMPDIR": str(tmp_path)}
    command = [sys.executable, str(SCRIPT), "--frames", "2", "--size", "64", "--gui", "--out", str(out)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    runs = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert sorted(r["impl"] for r in runs) == ["ours (stock)", "ours (stock, GUI)", "stock"]
    assert all(r["first_s"] > 0 and r["correction_s"] > 0 for r in runs)
    # Two frames, both prompted: the implementations must agree on every mask.
    assert len({r["foreground_fraction"] for r in runs}) == 1
    # The GUI's way: every slice encoded before the click, none by the propagation after it.
    gui = next(r for r in runs if r["impl"] == "ours (stock, GUI)")
    assert gui["encode_ahead_s"] > 0 and gui["frames_encoded"] == gui["frames_encoded_ahead"] == 2
    report = out.read_text()
    assert "| ours (stock) | 2 |" in report and "| stock | 2 |" in report and "| ours (stock, GUI) | 2 |" in report
    assert "--gui" in report and "median" not in report

    # The report of repeated runs, from printed rows (what --repeats 2 prints: each row twice)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r | {"repeat": k}) + "\n" for k in range(2) for r in runs))
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--frames", "2", "--size", "64", "--repeats", "2", "--gui",
                                      "--rows", str(rows), "--out", str(out)])
    _load_script().main()
    report = out.read_text()
    assert "over 2 runs" in report and "the median of 2 runs" in report and "--repeats 2 --gui" in report


def test_each_script_rewrites_only_its_own_section(tmp_path):
    bench = _load_script()
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\ntable\n\n## Reading the figures\n\nold reading\n\n## Cohorts\n\ncohorts\n\n"
                   "## Soak\n\nsoak\n")
    bench.replace_section(doc, "## Cohorts\n\nnew cohorts", "## Cohorts")
    bench.replace_section(doc, "## Converge-stop\n\nconverge", "## Converge-stop")
    text = doc.read_text()
    assert "new cohorts" in text and "\ncohorts" not in text and text.endswith("## Converge-stop\n\nconverge\n")
    # the engine report is written again from scratch, keeping the other scripts' sections
    kept = bench.other_sections(doc, own=("## Reading the figures",))
    assert [line for line in kept.splitlines() if line.startswith("## ")] == ["## Cohorts", "## Soak", "## Converge-stop"]
    assert "old reading" not in kept and "soak" in kept
