"""``python -m napari_samed2.evaluate IMAGE LABEL [IMAGE LABEL ...] --out DIR``: interactive evaluation.

A simulated user prompts each labelled object (a box on its middle slice), propagates, then
makes correction clicks; Dice and NSD are measured after every step. Writes results.csv,
summary.csv, summary.md and dice_per_click.png to --out. A thin layer over
:func:`napari_samed2.evaluation.evaluate_cases`, with the same option names.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from napari_samed2.errors import SamEd2Error

_NOT_PARAMETERS = {"inputs"}  # the positional pairs become evaluate_cases' ``cases``


def build_parser() -> argparse.ArgumentParser:
    from napari_samed2.evaluation import POLICIES
    from napari_samed2.evaluation.prompts import START_PROMPTS

    parser = argparse.ArgumentParser(prog="python -m napari_samed2.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE LABEL | FOLDER",
        help="image and label files in pairs (NIfTI or TIFF), or folders of pairs "
        "(<case>_image.nii.gz + <case>_label.nii.gz, or images/ + labels/ with equal names)",
    )
    parser.add_argument("--model", default="sam2.1-tiny", help="registry name or checkpoint file (default: %(default)s)")
    parser.add_argument(
        "--policies", nargs="+", choices=POLICIES, default=["stock"],
        help="memory policies, side by side in one run (default: stock)",
    )
    parser.add_argument(
        "--library", nargs="?", const=True, default=False, metavar="FOLDER",
        help="use a memory library: empty, or loaded from FOLDER; each finished case's memories join it",
    )
    parser.add_argument("--image-size", type=int, default=None, help="model input size in px (default: the model's)")
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    parser.add_argument("--axis", type=int, default=0, help="slicing axis of the volumes (default: 0, as read)")
    parser.add_argument("--clicks", type=int, default=5, help="correction clicks after the start prompt (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed for tie-breaking between click positions")
    parser.add_argument("--start", choices=START_PROMPTS, default="box", help="start prompt (default: %(default)s)")
    parser.add_argument("--nsd-tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm (default: 2)")
    parser.add_argument(
        "--converge-stop", dest="converge", nargs="?", const="0.98,3", default=None, type=_converge_stop,
        metavar="IOU,FRAMES",
        help="after each correction, stop re-propagating once FRAMES consecutive slices agree with their "
        "earlier masks at IoU >= IOU, as the GUI does (bare flag: 0.98,3; default: full re-run)",
    )
    parser.add_argument(
        "--absent", action="store_true",
        help="where a negative click would land on a slice without the object, press 'Not on this slice' "
        "instead, as a user of the panel can (default: clicks only)",
    )
    parser.add_argument(
        "--window", default=None, type=window_argument, metavar="PRESET | LOW,HIGH",
        help="intensity window the images are seen through, as the panel's choice: a CT preset "
        "(ct:soft_tissue, ct:lung, ct:bone, ct:brain, ct:liver) or LOW,HIGH in the image's units, "
        "written --window=LOW,HIGH when LOW is negative (default: the volume's 0.5-99.5 %% percentiles)",
    )
    parser.add_argument("--out", required=True, help="folder for the result files")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    return parser


def _converge_stop(text: str):
    """``IOU,FRAMES`` (e.g. ``0.98,3``) as a ConvergeStop."""
    from napari_samed2.engine import ConvergeStop

    try:
        iou, frames = text.split(",")
        return ConvergeStop(float(iou), int(frames))
    except (ValueError, SamEd2Error) as exc:
        raise argparse.ArgumentTypeError(
            f"expected IOU,FRAMES such as 0.98,3 (IoU in (0, 1], frames >= 1), got {text!r}: {exc}"
        ) from None


def window_argument(text: str):
    """``--window``'s value, ``ct:soft_tissue`` or ``LOW,HIGH``, as an IntensityWindow."""
    from napari_samed2.io.intensity import as_window

    try:
        if "," in text:
            low, high = text.split(",")
            return as_window((float(low), float(high)))
        return as_window(text)
    except (ValueError, SamEd2Error) as exc:
        raise argparse.ArgumentTypeError(f"expected a CT preset such as ct:soft_tissue, or LOW,HIGH; got {text!r}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except SamEd2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_samed2.evaluation import EvalCase, evaluate_cases, pairs_from_arguments

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cases = [EvalCase.from_files(image, label) for image, label in pairs_from_arguments(args.inputs)]
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    options = {k: v for k, v in vars(args).items() if k not in _NOT_PARAMETERS}
    bars: dict[str, tqdm] = {}

    def show(event) -> None:
        if "steps" not in bars:
            bars["cases"] = tqdm(total=event.cases, desc="cases", unit="case", position=0)
            bars["steps"] = tqdm(total=event.steps_total, desc="steps", unit="step", position=1)
        record = event.record
        bars["steps"].set_postfix_str(
            f"{record.case} {record.policy} object {record.object_id} step {record.step}: Dice {record.dice:.3f}"
        )
        bars["steps"].update()
        bars["cases"].n = event.case_index + (event.steps_done == event.steps_total)
        bars["cases"].refresh()

    try:
        evaluate_cases(cases=cases, progress=show, **options)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished steps are in {args.out}/results.partial.csv", file=sys.stderr)
        return 130
    finally:
        for bar in bars.values():
            bar.close()
    print(f"results in {args.out}: results.csv, summary.csv, summary.md, dice_per_click.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
