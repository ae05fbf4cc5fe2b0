"""``python -m napari_samed2.train``: fine-tune a model on image and label volumes.

A thin command line over :func:`napari_samed2.training.train`: every option is one of its
parameters, with the same name. Progress shows in a tqdm bar; Ctrl-C saves a checkpoint
(and the state to ``--resume`` from) before exiting.

Example::

    python -m napari_samed2.train --images a.nii.gz b.nii.gz --labels a_seg.nii.gz b_seg.nii.gz \
        --model sam2.1-tiny --train decoder,memory --steps 2000 --image-size 512 --out runs/first
"""

from __future__ import annotations

import argparse
import sys

from napari_samed2.errors import SamEd2Error


def build_parser() -> argparse.ArgumentParser:
    from napari_samed2.training.adapters import TRAINABLE
    from napari_samed2.training.trainer import TrainConfig

    p = argparse.ArgumentParser(prog="python -m napari_samed2.train", description=__doc__.splitlines()[0])
    p.add_argument("--images", nargs="+", help="NIfTI or TIFF image volumes")
    p.add_argument("--labels", nargs="+", help="their label volumes, in the same order")
    p.add_argument("--synthetic", type=int, default=0, metavar="N",
                   help="train on N synthetic volumes instead (validated on held-out synthetic volumes)")
    p.add_argument("--synthetic-distractors", action="store_true",
                   help="with --synthetic: the look-alike blobs are objects too, so the prompt must decide")
    p.add_argument("--sample-volumes", type=int, default=0, metavar="N",
                   help="also train on N volumes of the plugin's sample family (seeds 1..N; never seed 0, the one napari opens)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, best.safetensors, resume state")
    p.add_argument("--model", default="sam2.1-tiny", help="registry name or checkpoint file to start from")
    p.add_argument("--architecture", help="the model of a checkpoint whose keys do not say it")
    p.add_argument("--from-scratch", action="store_true",
                   help="start --model's architecture from its initial weights, not trained ones")
    p.add_argument("--val-images", nargs="+", help="held-out image volumes for validation Dice")
    p.add_argument("--val-labels", nargs="+", help="their label volumes")
    d = TrainConfig()
    p.add_argument("--config", help="training settings as JSON (e.g. a checkpoint's 'config' metadata); options override it")
    p.add_argument("--train", help=f"modules to train, comma-separated: {', '.join(TRAINABLE)} (default: {','.join(d.train)})")
    p.add_argument("--steps", type=int, help=f"training steps, one clip each (default: {d.steps})")
    p.add_argument("--clip-length", type=int, help=f"consecutive slices per clip (default: {d.clip_length})")
    p.add_argument("--batch", type=int, help=f"clips per optimiser step, their losses averaged (default: {d.batch})")
    p.add_argument("--lr", type=float, help=f"peak learning rate of AdamW (default: {d.lr})")
    p.add_argument("--weight-decay", type=float, help=f"(default: {d.weight_decay})")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: 5%% of --steps)")
    p.add_argument("--grad-clip", type=float, help=f"maximum gradient norm, 0: no clipping (default: {d.grad_clip})")
    p.add_argument("--seed", type=int, help=f"(default: {d.seed})")
    p.add_argument("--lora-rank", type=int, help=f"rank of the LoRA adapters with --train lora (default: {d.lora_rank})")
    for flag, dest, what in (
        ("--middle-start", "middle_start_prob",
         "start at their object's middle slice and run past its end when it is shorter than the clip"),
        ("--end-start", "end_start_prob", "show their object end while another object goes on beside it"),
        ("--single-slice", "single_slice_prob",
         "are one slice (a box or a click), to train the 2D model alongside tracking"),
        ("--revive", "revive_prob",
         "start before their object, told 'not on this slice', with a correction click where the object appears"),
    ):
        p.add_argument(flag, type=float, dest=dest, metavar="P",
                       help=f"share of clips that {what} (default: {getattr(d, dest)})")
    p.add_argument("--box-noise", type=float, metavar="S",
                   help=f"box prompt jitter, a share of the box side (default: SAM-2's {d.box_noise})")
    p.add_argument("--correction-frames", type=int, help=f"frames per clip with simulated correction clicks (default: {d.correction_frames})")
    p.add_argument("--correction-clicks", type=int, help=f"correction clicks per such frame (default: {d.correction_clicks})")
    p.add_argument("--prompt-probs", type=_prompt_probs, metavar="KIND=P,...",
                   help="first-slice prompt mix, e.g. box=0.5,click=0.25,mask=0.25 (default: SAM-2's)")
    p.add_argument("--loss-weights", type=_weights, metavar="TERM=W,...",
                   help=f"loss term weights, e.g. dice=5 (default: sam2's {_pairs(d.loss_weights)})")
    p.add_argument("--memory-policy", help=f"memory policy while training: stock or confidence (default: {d.memory_policy})")
    p.add_argument("--val-every", type=int, help=f"steps between validations, 0: never (default: {d.val_every})")
    p.add_argument("--save-every", type=int, help=f"steps between checkpoints, 0: only at the end (default: {d.save_every})")
    p.add_argument("--image-size", type=int, help="model input size in px (a multiple of 32; default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 autocast on CUDA, float32 elsewhere), float32, bfloat16 (CUDA only)")
    p.add_argument("--axis", type=int, default=0, help="the slicing axis of the volumes")
    p.add_argument("--resume", help="output folder of an earlier run to continue")
    return p


def _prompt_probs(text: str) -> dict[str, float]:
    try:
        return {kind.strip(): float(p) for kind, p in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give KIND=P pairs, e.g. box=0.5,click=0.25,mask=0.25") from None


def _weights(text: str) -> dict[str, float]:
    try:
        return {term.strip(): float(w) for term, w in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give TERM=WEIGHT pairs, e.g. focal=20,dice=5") from None


def _pairs(values: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in values.items())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from napari_samed2.training import train

    try:
        progress = train(**vars(args))
    except SamEd2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar = None
    try:
        for p in progress:
            if bar is None:  # the total is known now (from --steps or --config), and where a resumed run starts
                bar = tqdm(total=p.steps, initial=p.step - 1, desc="training", unit="step")
            bar.update(1)
            post = {"loss": f"{p.loss:.4f}", "lr": f"{p.lr:.2e}"}
            if p.val_dice is not None:
                post["val_dice"] = f"{p.val_dice:.3f}"
            bar.set_postfix(post)
            if p.saved is not None:
                bar.write(f"step {p.step}: saved {p.saved}")
    except KeyboardInterrupt:
        try:
            progress.throw(KeyboardInterrupt)  # lets the loop save if Ctrl-C came between steps
        except (KeyboardInterrupt, StopIteration):
            pass
        if bar is not None:
            bar.close()
        print(f"interrupted: saved to {args.out} (continue with --resume {args.out})", file=sys.stderr)
        return 130
    except SamEd2Error as exc:
        if bar is not None:
            bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if bar is not None:
        bar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
