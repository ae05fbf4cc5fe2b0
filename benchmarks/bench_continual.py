"""Continual adaptation over four synthetic "modalities", for each ablation mode.

    python benchmarks/bench_continual.py demo                       # the demo model, defaults
    python benchmarks/bench_continual.py /path/model.safetensors --steps 20 --train-volumes 2
    python benchmarks/bench_continual.py demo --shape 6 64 64 --train-volumes 1 --test-volumes 1 --steps 2  # smoke

Four domains built over :mod:`napari_samed2.training.synthetic`'s generator (same anatomy
and labels, different image formation): ``mr`` (soft contrast, smooth bias), ``ct``
(Hounsfield-like values with bright bone around the body, so a percentile window squeezes
soft tissue; evaluated and learnt through a window on the tissue's range, -1,000 to 100 HU,
as a CT user reads it, unless ``--ct-window auto``), ``us`` (multiplicative speckle and depth attenuation) and ``micro`` (bright
objects on a dark background with cell-like texture and shot noise). Training volumes come
from training streams, test volumes from held-out streams. For each mode (``none``,
``naive``, ``replay``, ``replay+distill``) the model starts from the given weights and
learns the domains in order, one confirmed volume at a time (:func:`adapt`); before any
learning and after each domain, every domain's test volumes are evaluated with the
evaluation harness (Dice after the box, clicks to Dice 0.9). An adapted model that segments its own
confirmed volume worse than the model before is dropped (``AdaptConfig.check``; ``--no-check``
keeps it); the table counts the versions kept.

Summaries, with ``R[i][j]`` the mean Dice after the box on domain ``j`` after learning
domain ``i`` and ``b[j]`` before any learning: average accuracy ``mean_j R[T-1][j]``,
backward transfer ``mean_{j<T-1} R[T-1][j] - R[j][j]`` (negative: forgetting), forward
transfer ``mean_{j>0} R[j-1][j] - b[j]``. The table replaces the results section of
``--out`` (default docs/continual.md); the plot and ``continual_results.json`` go beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

DOMAINS = ("mr", "ct", "us", "micro")
MODES = ("none", "naive", "replay", "replay+distill")
CT_TISSUE_WINDOW = (-1000.0, 100.0)  # the CT-like render's tissue lies between -1,000 and 80 HU
START, END = "<!-- results: written by benchmarks/bench_continual.py -->", "<!-- end of results -->"


def _unit(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.5])
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)


def render(domain: str, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The synthetic case's image as ``domain`` would show it (labels unchanged)."""
    u = _unit(image)
    body = ndimage.binary_fill_holes(u > 0.1)
    if domain == "mr":  # soft contrast, a smooth bias field, low noise
        z, y, x = (np.linspace(-1, 1, n, dtype=np.float32) for n in u.shape)
        bias = np.exp(0.3 * (y[None, :, None] + 0.5 * x[None, None, :]))
        return ((0.35 + 0.3 * u) * bias * 800 + rng.normal(0, 8, u.shape)).astype(np.float32)
    if domain == "ct":  # HU-like values, bright bone ring under the body outline
        hu = -1000 + 1080 * u
        rim = body & ~ndimage.binary_erosion(body, iterations=3, structure=np.ones((1, 3, 3)))
        hu[rim & (labels == 0)] = 1400 + rng.normal(0, 60, int((rim & (labels == 0)).sum()))
        return (hu + rng.normal(0, 15, u.shape)).astype(np.float32)
    if domain == "us":  # speckle (Rayleigh, multiplicative) and attenuation with depth (rows)
        speckle = rng.rayleigh(0.8, u.shape).astype(np.float32)
        depth = np.exp(-1.5 * np.linspace(0, 1, u.shape[1], dtype=np.float32))[None, :, None]
        return (255 * np.clip((0.2 + 0.8 * u) * speckle * depth, 0, 1.5)).astype(np.float32)
    if domain == "micro":  # fluorescence: objects bright on dark, cell-like texture, shot noise
        cells = ndimage.gaussian_filter(rng.random(u.shape).astype(np.float32), (0, 1.5, 1.5))
        signal = 0.05 + 0.9 * (labels > 0) * (0.6 + 0.8 * cells) + 0.25 * (u > 0.5) * cells
        return rng.poisson(np.clip(signal, 0, None) * 200).astype(np.float32)
    raise ValueError(f"unknown domain {domain!r}; the domains are {DOMAINS}")


@dataclass(frozen=True)
class Volume:
    domain: str
    name: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    window: tuple[float, float] | None = None  # the intensity window it is read through (None: percentiles)


def volumes(domain: str, count: int, shape: tuple[int, int, int], *, held_out: bool,
            ct_window: tuple[float, float] | None = CT_TISSUE_WINDOW) -> list[Volume]:
    from napari_samed2.training.synthetic import HELD_OUT_SEED, SyntheticConfig, synthetic_stream

    config = SyntheticConfig.fixed_shape(shape, objects=(1, 2), corrupted_fraction=0.0)
    seed = DOMAINS.index(domain) + 1 + (HELD_OUT_SEED if held_out else 100)
    found = []
    for k, case in enumerate(itertools.islice(synthetic_stream(seed, config, held_out=held_out), count)):
        rng = np.random.default_rng([seed, k, 7])
        image = render(domain, case.image, case.labels, rng)
        kind = "test" if held_out else "train"
        window = ct_window if domain == "ct" else None
        found.append(Volume(domain, f"{domain}-{kind}-{k}", image, case.labels, case.spacing, window))
    return found


def evaluate(model, tests: dict[str, list[Volume]], clicks: int) -> dict[str, dict[str, float]]:
    """Per domain: mean Dice after the box and mean clicks to Dice 0.9 over its test objects."""
    import warnings

    from napari_samed2.evaluation import EvalCase, evaluate_cases

    scores = {}
    for domain, items in tests.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cases = [EvalCase.from_arrays(v.image, v.labels, v.spacing, name=v.name) for v in items]
        results = evaluate_cases(model, cases, clicks=clicks, window=items[0].window)
        box = [r.dice for r in results.records if r.step == 0]
        scores[domain] = {
            "dice": float(np.mean(box)),
            "clicks": float(np.mean([s.clicks_to_target for s in results.summaries])),
        }
    return scores


def summarise(before: dict, stages: list[dict], domains: list[str], metric: str = "dice") -> dict[str, float]:
    last = len(domains) - 1
    final = stages[-1]
    return {
        "average": float(np.mean([final[d][metric] for d in domains])),
        "backward": float(np.mean([final[d][metric] - stages[i][d][metric] for i, d in enumerate(domains[:last])])) if last else 0.0,
        "forward": float(np.mean([stages[i - 1][d][metric] - before[d][metric] for i, d in enumerate(domains) if i])) if last else 0.0,
    }


def run_mode(args, mode: str, trains: dict, tests: dict, work: Path) -> dict:
    from napari_samed2 import load_model
    from napari_samed2.training.continual import CaseStore, adapt, case_from_arrays

    model = load_model(args.model, device=args.device, dtype="float32", image_size=args.image_size)
    store = CaseStore.open(work / mode / "store")
    before = evaluate(model, tests, args.clicks)
    evaluated, scores = model, before  # a stage that kept its model (mode "none") reuses its scores
    stages, seconds, kept = [], [], 0
    for domain in args.domains:
        for volume in trains[domain]:
            case = case_from_arrays(model, volume.image, volume.labels, name=volume.name, spacing=volume.spacing,
                                    window=volume.window)
            store.add(case)
            overrides = {name: value for name, value in (("lr", args.lr), ("train", args.train)) if value is not None}
            for progress in adapt(model, case, store, versions=work / mode / "versions", mode=mode, steps=args.steps,
                                  seed=args.seed, check=args.check, **overrides):
                pass
            model = progress.result.model
            seconds.append(progress.result.seconds)
            kept += progress.result.version is not None
        if model is not evaluated:
            evaluated, scores = model, evaluate(model, tests, args.clicks)
        stages.append(scores)
        print(json.dumps({"mode": mode, "after": domain, "scores": stages[-1]}), flush=True)
    return {
        "mode": mode, "before": before, "stages": stages,
        "seconds_per_adaptation": float(np.mean(seconds)) if mode != "none" else 0.0,
        "kept": f"{kept}/{len(seconds)}" if mode != "none" else "-",
        "dice": summarise(before, stages, args.domains, "dice"),
        "clicks": summarise(before, stages, args.domains, "clicks"),
    }


def markdown(runs: list[dict], args, plot: Path) -> str:
    size = args.image_size or "the model's own"
    rate = args.lr or "AdaptConfig's default"
    from napari_samed2.training.continual import AdaptConfig

    trained = args.train or ",".join(AdaptConfig().train)
    lines = [
        f"Model `{args.model}`, {size} px, lr {rate}, adapting {trained}, {args.device}; domains {', '.join(args.domains)}; "
        f"{args.train_volumes} confirmed volume(s) per domain, {args.test_volumes} held-out per domain, shape "
        f"{tuple(args.shape)}; {args.steps} steps per adaptation{'' if args.check else ', unchecked'}; {args.clicks} correction clicks; CT window "
        f"{'-1000 to 100 HU' if args.ct_window == 'tissue' else 'the percentiles'}; "
        f"{platform.processor() or platform.machine()}.",
        "",
        "| mode | avg Dice (box) | BWT Dice | FWT Dice | avg clicks to 0.9 | BWT clicks | s / adaptation | versions kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        d, c = run["dice"], run["clicks"]
        lines.append(
            f"| {run['mode']} | {d['average']:.3f} | {d['backward']:+.3f} | {d['forward']:+.3f} | "
            f"{c['average']:.2f} | {c['backward']:+.2f} | {run['seconds_per_adaptation']:.1f} | {run['kept']} |"
        )
    lines += ["", "Dice after the box per domain (rows: after learning that domain; `before`: the starting model):", ""]
    for run in runs:
        lines += [f"**{run['mode']}**", "", "| after | " + " | ".join(args.domains) + " |",
                  "|---|" + "---|" * len(args.domains)]
        for label, scores in [("before", run["before"]), *zip(args.domains, run["stages"])]:
            lines.append(f"| {label} | " + " | ".join(f"{scores[d]['dice']:.3f}" for d in args.domains) + " |")
        lines.append("")
    lines.append(f"![Dice per domain after each stage]({plot.name})")
    return "\n".join(lines)


def plot_runs(runs: list[dict], domains: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(domains), figsize=(3.2 * len(domains), 3), sharey=True, squeeze=False)
    stages = ["before", *domains]
    for ax, domain in zip(axes[0], domains):
        for run in runs:
            values = [run["before"][domain]["dice"], *(s[domain]["dice"] for s in run["stages"])]
            ax.plot(range(len(stages)), values, marker="o", label=run["mode"])
        ax.set_xticks(range(len(stages)), stages, rotation=45)
        ax.set_title(f"test on {domain}")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("Dice after the box")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(out: Path, text: str) -> None:
    """Replace the results section of ``out`` (or append one), keeping the rest of the file."""
    section = f"{START}\n{text}\n{END}"
    old = out.read_text() if out.exists() else "# Continual adaptation\n"
    if START in old and END in old:
        new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, old, flags=re.S)
    else:
        new = old.rstrip() + "\n\n## Results\n\n" + section + "\n"
    out.write_text(new)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="registry name or checkpoint path of the model to start from")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--train-volumes", type=int, default=1, help="confirmed volumes per domain, learned one at a time")
    parser.add_argument("--test-volumes", type=int, default=3, help="held-out volumes per domain")
    parser.add_argument("--shape", type=int, nargs=3, default=(24, 160, 160), metavar=("Z", "Y", "X"))
    parser.add_argument("--steps", type=int, default=20, help="adaptation steps per confirmed volume")
    parser.add_argument("--lr", type=float, default=None, help="adaptation learning rate (default: AdaptConfig's)")
    parser.add_argument("--train", default=None, metavar="MODULES",
                        help="what adapts, comma-separated module names, e.g. lora,lora_memory,lora_decoder "
                             "(default: AdaptConfig's)")
    parser.add_argument("--clicks", type=int, default=3, help="correction clicks in the evaluation")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-check", dest="check", action="store_false",
        help="keep every adapted model, even one that segments its own confirmed volume worse (AdaptConfig.check)",
    )
    parser.add_argument(
        "--ct-window", default="tissue", choices=("tissue", "auto"),
        help="read the CT-like domain through a window on its tissue's range, -1000 to 100 HU, as a CT user "
        "would (default), or through the volume's percentiles (auto: bone squeezes the tissue)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "continual.md")
    return parser


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    shape = tuple(args.shape)
    ct_window = CT_TISSUE_WINDOW if args.ct_window == "tissue" else None
    trains = {d: volumes(d, args.train_volumes, shape, held_out=False, ct_window=ct_window) for d in args.domains}
    tests = {d: volumes(d, args.test_volumes, shape, held_out=True, ct_window=ct_window) for d in args.domains}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        runs = [run_mode(args, mode, trains, tests, Path(work)) for mode in args.modes]
    plot = args.out.with_name("continual.png")
    plot_runs(runs, args.domains, plot)
    args.out.with_name("continual_results.json").write_text(json.dumps(runs, indent=1))
    write_report(args.out, markdown(runs, args, plot))
    print(f"done in {time.perf_counter() - start:.0f} s: {args.out}")
    return runs


if __name__ == "__main__":
    main()
