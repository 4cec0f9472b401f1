"""The labelled-split arguments the accuracy benchmarks share (--images, --masks, --ids),
and the main of those that compare two runs of one model on a split (precision, tta)."""

import argparse
from pathlib import Path

from cellvit_cli.training.data import pair_files, read_ids


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """--images and --masks folders, and --ids (a file of image stems to use)."""
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--ids", type=Path, help="file of image stems to use")


def split_pairs(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(image, mask) paths of the split the arguments name."""
    return pair_files(args.images, args.masks, read_ids(args.ids) if args.ids else None)


def compare_on_split(description: str, run_pairs, report) -> None:
    """Parse --images/--masks/--ids, --model and --device; print the CPU and
    `report(run_pairs(pairs, model, device))`, a list of lines."""
    from cellvit_cli.device import cpu_description

    parser = argparse.ArgumentParser(description=description)
    add_split_arguments(parser)
    parser.add_argument("--model", default=None, help="model folder or name (default: shipped)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    pairs = split_pairs(args)
    print(f"{len(pairs)} images; CPU: {cpu_description()}", flush=True)
    print("\n".join(report(run_pairs(pairs, args.model, args.device))))
