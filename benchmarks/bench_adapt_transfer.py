"""Does one adaptation transfer? Dice on the confirmed volume and on held-out volumes of its domain.

    .venv/bin/python benchmarks/bench_adapt_transfer.py --domain mr \\
        --settings 'dict(steps=60, lr=3e-4)' 'dict(steps=60, lr=1e-4, train=("decoder", "memory"))'

One training volume of a domain of ``bench_continual.py`` is confirmed and learnt in ``naive``
mode with each ``--settings`` (keyword arguments of :func:`adapt`, as Python literals), each
time from the starting model; the box-prompted Dice on that volume and on ``--test-volumes``
held-out volumes of the domain is printed before and after (``dict(check=False)`` keeps an
adapted model that failed its check, to see what it learnt). It separates "the adaptation
does not fit" from "what it fits does not carry over" (docs/continual.md).
"""

from __future__ import annotations

import argparse
import ast
import tempfile

import bench_continual


def box_dice(model, volumes) -> float:
    """Mean Dice after the box over the objects of ``volumes`` (no correction clicks)."""
    return bench_continual.evaluate(model, {"volumes": volumes}, clicks=0)["volumes"]["dice"]


def settings(text: str) -> dict:
    """``dict(steps=60, lr=3e-4)`` as a dict, read as a literal (no code runs)."""
    call = ast.parse(text, mode="eval").body
    if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "dict" and not call.args):
        raise argparse.ArgumentTypeError(f"expected dict(name=value, ...), got {text!r}")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--domain", default="mr", choices=bench_continual.DOMAINS)
    parser.add_argument("--shape", type=int, nargs=3, default=(16, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--test-volumes", type=int, default=2)
    parser.add_argument("--settings", type=settings, nargs="+", default=[{}])
    args = parser.parse_args()

    from napari_samed2 import load_model
    from napari_samed2.training.continual import CaseStore, adapt, case_from_arrays

    train = bench_continual.volumes(args.domain, 1, tuple(args.shape), held_out=False)[0]
    tests = bench_continual.volumes(args.domain, args.test_volumes, tuple(args.shape), held_out=True)
    base = load_model(args.model, device="cpu", dtype="float32")
    print(f"before: confirmed {box_dice(base, [train]):.3f}, held-out {box_dice(base, tests):.3f}", flush=True)
    for options in args.settings:
        with tempfile.TemporaryDirectory() as work:
            store = CaseStore.open(f"{work}/store")
            case = case_from_arrays(base, train.image, train.labels, name=train.name, spacing=train.spacing,
                                    window=train.window)
            store.add(case)
            for progress in adapt(base, case, store, versions=f"{work}/versions", mode="naive", **options):
                pass
            result = progress.result
            adapted = result.model
            verdict = "" if result.check is None else (
                f" (check {result.check.before:.3f} -> {result.check.after:.3f}: "
                f"{'kept' if result.check.passed else 'dropped, the model as before'})")
            print(f"{options}: confirmed {box_dice(adapted, [train]):.3f}, held-out {box_dice(adapted, tests):.3f},"
                  f" {result.seconds:.1f} s{verdict}", flush=True)


if __name__ == "__main__":
    main()
