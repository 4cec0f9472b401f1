"""The labelled-split arguments the accuracy benchmarks share: --images, --masks, --ids."""

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
