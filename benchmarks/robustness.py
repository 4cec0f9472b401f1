"""Accuracy on a split and on a harder copy of it: dim objects beside bright ones and an
uneven background, the failures of issue 12, made from images that are not test_fluo.

The harder copy of each image (grey, float32): half of its objects (chosen with a fixed
seed) keep a quarter of their contrast to the background (the median outside objects;
over the object grown by 3 px, its glow),
and a linear ramp of 30 % of the image's 1-99.8 percentile range runs across it. Both
copies are scored by `accuracy.score_modes` (each mode with the model's thresholds) at
zoom 1, for each model given.

    python benchmarks/robustness.py --models runs/a runs/b --images ../shared/data/dsb2018/train/images \
        --masks ../shared/data/dsb2018/train/masks --ids ../shared/data/dsb2018/splits/fluo_val.txt
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import tifffile

from skimage.segmentation import expand_labels

from accuracy import score_modes
from cellvit_cli.device import cpu_description
from cellvit_cli.io import read_image, read_labels
from cellvit_cli.training.augment import GLOW_PX
from cellvit_cli.training.data import pair_files, read_ids
from splits import add_split_arguments

DIM_SHARE, DIM_CONTRAST, RAMP = 0.5, 0.25, 0.3


def harder(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(Y, X) float32 grey copy of (C, Y, X) `image` with dimmed objects and a ramp."""
    grey = image.astype(np.float32).mean(axis=0)
    background = float(np.median(grey[labels == 0])) if (labels == 0).any() else 0.0
    ids = np.unique(labels[labels > 0])
    dim = rng.choice(ids, size=int(round(DIM_SHARE * ids.size)), replace=False) if ids.size else ids
    grown = expand_labels(labels, GLOW_PX)  # the glow around a nucleus dims with it
    gain = np.where(np.isin(grown, dim), DIM_CONTRAST, 1.0).astype(np.float32)
    out = background + (grey - background) * gain
    low, high = np.percentile(grey, (1, 99.8))
    y = np.linspace(0, 1, grey.shape[0], dtype=np.float32)[:, None]
    x = np.linspace(0, 1, grey.shape[1], dtype=np.float32)[None, :]
    return (out + RAMP * (high - low) * (y + x) / 2).astype(np.float32)


def write_harder(pairs, folder: Path) -> list[str]:
    """Write the harder copy of each pair's image into `folder`; return their ids."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for image_path, mask_path in pairs:
        labels = read_labels(mask_path)
        tifffile.imwrite(folder / f"{image_path.stem}.tif",
                         harder(read_image(image_path).data, labels, rng))
    return [p.stem for p, _ in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    add_split_arguments(parser)
    args = parser.parse_args()
    ids = read_ids(args.ids) if args.ids else None
    pairs = pair_files(args.images, args.masks, ids)
    hard = Path(tempfile.mkdtemp(prefix="harder_"))
    write_harder(pairs, hard)
    print(f"{len(pairs)} images; CPU: {cpu_description()}")
    print("| model | copy | " + " | ".join(f"{m} AP@0.5" for m in ("star", "flow", "boundary", "fused"))
          + " |\n|---|---|---|---|---|---|")
    for model in args.models:
        for name, folder in (("plain", args.images), ("harder", hard)):
            results, _ = score_modes(model, folder, args.masks, ids)
            print(f"| {model} | {name} | " + " | ".join(f"{r['ap_50']:.3f}" for r in results.values())
                  + " |", flush=True)


if __name__ == "__main__":
    main()
