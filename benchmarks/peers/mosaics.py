"""Build big test images (default 2048 x 2048) by tiling test_fluo (or fluo_val) images.

    python benchmarks/peers/mosaics.py OUT --count 4 --size 2048
    python benchmarks/peers/mosaics.py OUT --split fluo_val   # to tune on, not test_fluo

Writes OUT/images/mosaic_<k>_<id8>.tif and OUT/masks/mosaic_<k>_<id8>.tif. Mosaic k tiles
randomly flipped (and, for square images, rotated) copies of one image of the split
(test_fluo unless --split says), chosen evenly spaced through the split, row by row,
cropping the last row and column (the idea of `cellvit_cli.samples.make_mosaic`, kept
to numpy + tifffile so that any environment runs it). Every object is a real annotated nucleus; copies are renumbered so labels stay unique.
"""

import argparse
from pathlib import Path

import numpy as np
import peerdata
import tifffile


def variants(image: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 8 flips/rotations of a square (Y, X[, C]) image, the 4 flips of a rectangular one."""
    out = []
    for k in (range(4) if image.shape[0] == image.shape[1] else (0, 2)):
        img, lab = np.rot90(image, k, axes=(0, 1)), np.rot90(labels, k)
        out += [(img, lab), (img[:, ::-1], lab[:, ::-1])]
    return out


def make_mosaic(image: np.ndarray, labels: np.ndarray, size: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """(size, size[, C]) image of image's dtype and (size, size) int64 labels."""
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)  # 0..n, no gaps
    n = int(labels.max())
    choices = variants(image, labels)
    rng = np.random.default_rng(seed)
    th, tw = image.shape[:2]
    out_image = np.zeros((size, size) + image.shape[2:], image.dtype)
    out_labels = np.zeros((size, size), np.int64)
    copy = 0
    for y0 in range(0, size, th):
        for x0 in range(0, size, tw):
            img, lab = choices[rng.integers(len(choices))]
            h, w = min(th, size - y0), min(tw, size - x0)
            out_image[y0:y0 + h, x0:x0 + w] = img[:h, :w]
            crop = lab[:h, :w]
            out_labels[y0:y0 + h, x0:x0 + w] = np.where(crop > 0, crop + n * copy, 0)
            copy += 1
    return out_image, np.unique(out_labels, return_inverse=True)[1].reshape(out_labels.shape)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--data", type=Path, default=peerdata.DEFAULT_DATA)
    p.add_argument("--split", default=peerdata.TEST_SPLIT,
                   choices=(peerdata.TEST_SPLIT, peerdata.VAL_SPLIT))
    args = p.parse_args(argv)
    ids = peerdata.read_ids(args.data, args.split)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "masks").mkdir(parents=True, exist_ok=True)
    for k in range(args.count):
        image_id = ids[k * len(ids) // args.count]
        folder = args.data / peerdata.SPLIT_FOLDER[args.split]
        image = tifffile.imread(folder / "images" / f"{image_id}.tif")
        labels = tifffile.imread(folder / "masks" / f"{image_id}.tif")
        mosaic, mosaic_labels = make_mosaic(image, labels, args.size, seed=k)
        name = f"mosaic_{k}_{image_id[:8]}.tif"
        tifffile.imwrite(args.out / "images" / name, mosaic, compression="zlib")
        peerdata.write_labels(args.out / "masks" / name, mosaic_labels)
        print(f"{name}: tiles of {image.shape}, {int(mosaic_labels.max())} objects")


if __name__ == "__main__":
    main()
