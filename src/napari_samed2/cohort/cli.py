"""``python -m napari_samed2.cohort {embed,segment,evaluate} COHORT --model M --out DIR``.

embed: every slice of every volume into the persistent embedding cache (opening a volume
later runs no image encoder). segment: each volume's saved prompts through the engine,
labels as NIfTI and a CSV with the least confident volumes first. evaluate: the interactive
evaluation over every (image, label) pair. On this machine by default (a local Dask cluster,
--workers N, or --workers 0 in-process), on a cluster with --scheduler ADDRESS. Running the
same command again does only what is missing or failed. A thin layer over
:mod:`napari_samed2.cohort`'s ``embed_cohort``, ``segment_cohort`` and ``evaluate_cohort``,
with the same option names.
"""

from __future__ import annotations

import argparse
import sys

from napari_samed2.errors import SamEd2Error

COMMANDS = ("embed", "segment", "evaluate")
_NOT_PARAMETERS = {"command"}


def build_parser() -> argparse.ArgumentParser:
    from napari_samed2.evaluate import window_argument
    from napari_samed2.evaluation import POLICIES
    from napari_samed2.evaluation.prompts import START_PROMPTS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "cohort", metavar="COHORT",
        help="a folder of NIfTI/TIFF images (labels and prompt files beside them or in labels/ and prompts/) "
        "or a CSV file with columns image[,label,prompts,name]",
    )
    common.add_argument("--model", required=True, help="registry name or checkpoint file")
    common.add_argument("--out", required=True, help="folder for the CSV, labels and per-volume records")
    common.add_argument("--axis", type=int, default=0, help="slicing axis of the volumes (default: 0, as read)")
    common.add_argument(
        "--window", default=None, type=window_argument, metavar="PRESET | LOW,HIGH",
        help="intensity window the slices are read through: a CT preset (ct:soft_tissue, ct:lung, ct:bone, "
        "ct:brain, ct:liver) or --window=LOW,HIGH in the images' units (default: each volume's 0.5-99.5 %% "
        "percentiles); segment finds what embed stored only through the same window",
    )
    common.add_argument("--image-size", type=int, default=None, help="model input size in px (default: the model's)")
    common.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    common.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (default: %(default)s)")
    common.add_argument(
        "--workers", type=int, default=None,
        help="local Dask worker processes (default: one per GPU, or 1); 0 runs in this process",
    )
    common.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="run on the Dask cluster at ADDRESS (e.g. tcp://10.0.0.5:8786) instead")
    common.add_argument("--redo", action="store_true",
                        help="run every volume again, even those an earlier run finished")

    parser = argparse.ArgumentParser(prog="python -m napari_samed2.cohort", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{embed,segment,evaluate}")
    embed = commands.add_parser("embed", parents=[common], help="precompute every slice's image embedding")
    embed.add_argument("--cache", default=None, help="embedding cache folder (default: the one sessions read)")
    segment = commands.add_parser("segment", parents=[common], help="segment every volume from its prompt file")
    segment.add_argument("--policy", choices=POLICIES, default="stock", help="memory policy (default: %(default)s)")
    segment.add_argument("--cache", default=None, help="embedding cache folder to read (default: the one embed fills)")
    evaluate = commands.add_parser("evaluate", parents=[common], help="interactive evaluation of every labelled volume")
    evaluate.add_argument("--policies", nargs="+", choices=POLICIES, default=["stock"],
                          help="memory policies, side by side (default: stock)")
    evaluate.add_argument("--clicks", type=int, default=5, help="correction clicks after the start prompt (default: 5)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed for tie-breaking between click positions")
    evaluate.add_argument("--start", choices=START_PROMPTS, default="box", help="start prompt (default: %(default)s)")
    evaluate.add_argument("--nsd-tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default: 2)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """0 when every volume is done, 1 when some failed (see the CSV), 2 for unusable input."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except SamEd2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_samed2 import cohort

    command = {"embed": cohort.embed_cohort, "segment": cohort.segment_cohort, "evaluate": cohort.evaluate_cohort}
    options = {k: v for k, v in vars(args).items() if k not in _NOT_PARAMETERS}
    bar = None

    def show(event) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total, desc=args.command, unit="volume")
        row = event.result.row
        bar.set_postfix_str(f"{row.name}: {row.status}", refresh=False)
        bar.update()

    try:
        report = command[args.command](progress=show, **options)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: finished volumes are recorded in {args.out}; run the same command again to do the rest",
            file=sys.stderr,
        )
        return 130
    finally:
        if bar is not None:
            bar.close()
    print(f"{report.describe()}; see {report.files[0]}")
    for name in report.failed[:10]:
        error = next(r.row.error for r in report.results if r.row.name == name)
        print(f"failed: {name}: {error}", file=sys.stderr)
    return 1 if report.failed else 0
