"""The continual-adaptation benchmark runs end to end at a tiny size and writes its report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_continual.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("bench_continual", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_learns_four_domains_and_replaces_only_its_results_section(tmp_path):
    from napari_samed2.models.random_weights import save_random_checkpoint

    bench = _load_script()
    model = save_random_checkpoint(tmp_path / "demo.pt", "demo", image_size=128, seed=0)
    out = tmp_path / "continual.md"
    out.write_text(f"# Continual adaptation\n\nHow to run it.\n\n{bench.START}\nold numbers\n{bench.END}\n\nAfter.\n")
    runs = bench.main([
        str(model), "--image-size", "128", "--shape", "8", "64", "64", "--train-volumes", "1", "--test-volumes", "1",
        "--steps", "2", "--clicks", "1", "--modes", "none", "replay+distill", "--out", str(out),
    ])
    assert [run["mode"] for run in runs] == ["none", "replay+distill"]
    assert all(len(run["stages"]) == 4 and set(run["stages"][-1]) == set(bench.DOMAINS) for run in runs)
    none, adapted = runs
    assert none["stages"][-1] == none["before"]  # no adaptation: the same model throughout
    assert none["dice"]["backward"] == 0.0 and adapted["seconds_per_adaptation"] > 0
    report = out.read_text()
    assert report.startswith("# Continual adaptation\n\nHow to run it.") and report.rstrip().endswith("After.")
    assert "old numbers" not in report and "| replay+distill |" in report and report.count(bench.START) == 1
    assert (tmp_path / "continual.png").stat().st_size > 0
    assert json.loads((tmp_path / "continual_results.json").read_text())[1]["mode"] == "replay+distill"


def test_summaries_follow_the_continual_learning_definitions():
    bench = _load_script()
    score = lambda *values: {d: {"dice": v} for d, v in zip("ab", values)}  # noqa: E731
    before = score(0.1, 0.2)
    stages = [score(0.8, 0.3), score(0.6, 0.9)]  # learn a, then b
    summary = bench.summarise(before, stages, ["a", "b"])
    assert summary["average"] == (0.6 + 0.9) / 2
    assert abs(summary["backward"] - (0.6 - 0.8)) < 1e-9  # forgetting of a
    assert abs(summary["forward"] - (0.3 - 0.2)) < 1e-9  # b helped by learning a


def test_the_ct_like_domain_is_read_through_a_tissue_window_unless_asked_not_to(monkeypatch):
    bench = _load_script()
    ct = bench.volumes("ct", 1, (8, 48, 48), held_out=True)[0]
    assert ct.window == bench.CT_TISSUE_WINDOW and ct.image.min() < -900 and ct.image.max() > 1000
    assert bench.volumes("ct", 1, (8, 48, 48), held_out=True, ct_window=None)[0].window is None
    assert bench.volumes("mr", 1, (8, 48, 48), held_out=True)[0].window is None
    windows = []
    import napari_samed2.evaluation as evaluation

    def spy(model, cases, clicks, window):
        windows.append(window)
        return SimpleNamespace(records=[SimpleNamespace(step=0, dice=0.5)], summaries=[SimpleNamespace(clicks_to_target=2)])

    monkeypatch.setattr(evaluation, "evaluate_cases", spy)
    assert bench.evaluate(None, {"ct": [ct]}, clicks=0) == {"ct": {"dice": 0.5, "clicks": 2.0}}
    assert windows == [bench.CT_TISSUE_WINDOW]
