"""Seconds per 1024x1024 image for each decoding mode, on realistic maps.

The maps are the targets of a 2x2 mosaic of DSB validation masks (512x512 crops), blurred
(Gaussian, sigma 1 px), with noise (sd 0.05) and probabilities scaled by 0.9: roughly what a
trained model gives. Each decoding runs `--repeats` times; the fastest is reported (the
machine is shared), wall and CPU seconds, with AP@0.5/0.75 against the mosaic labels.
With `--tune N`, also times `training.tune.tune_thresholds` on the first N validation images
(degraded targets as maps); with `--roundtrip N`, reports the pooled AP of decoding the
exact targets of the first N validation images (the round trip, as in tests/test_roundtrip.py).

    python benchmarks/decode_speed.py [--repeats 3] [--tune N] [--roundtrip N]
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from stardist import non_maximum_suppression, polygons_to_label

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cellvit_cli.metrics import average_precision
from cellvit_cli.postprocess import decode
from cellvit_cli.postprocess.star import _one_openmp_thread
from cellvit_cli.targets import HEADS, make_targets
from tests.helpers import degrade

DSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
SCALE = 0.9  # probabilities scaled by 0.9 here (the round-trip tests use degrade's 0.8)
RUNS = [  # (name, mode, thresholds)
    ("star", "star", None),
    ("flow", "flow", None),
    ("flow, no flow-error check", "flow", {"flow": {"flow_thresh": 0}}),
    ("boundary", "boundary", None),
    ("fused", "fused", None),
]


def val_masks(n: int | None = None) -> list[np.ndarray]:
    ids = (DSB / "splits" / "fluo_val.txt").read_text().split()[:n]
    return [tifffile.imread(DSB / "train" / "masks" / f"{i}.tif").astype(np.int32) for i in ids]


def mosaic(masks: list[np.ndarray], size: int = 1024, crop: int = 512) -> np.ndarray:
    """(size, size) int32 labels tiled from the `crop` x `crop` corners with most nuclei."""
    crops = sorted((m[:crop, :crop] for m in masks), key=lambda c: -len(np.unique(c)))
    out = np.zeros((size, size), np.int32)
    tiles = [(y, x) for y in range(0, size, crop) for x in range(0, size, crop)]
    for (y, x), part in zip(tiles, crops):
        out[y:y + part.shape[0], x:x + part.shape[1]] = np.where(part > 0, part + out.max(), 0)
    return out


def best_time(fn, repeats: int):
    """(wall seconds, CPU seconds of this process) of the fastest run, and its result."""
    runs, result = [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs), result


def stardist_dense(star_map: np.ndarray, prob_thresh=0.5, nms_thresh=0.4) -> np.ndarray:
    """stardist's own decoding: every pixel above threshold a candidate (one OpenMP thread)."""
    with _one_openmp_thread():
        rays = np.moveaxis(star_map[1:], 0, -1)
        points, prob, dist = non_maximum_suppression(rays, star_map[0], nms_thresh=nms_thresh,
                                                     prob_thresh=prob_thresh)
    return polygons_to_label(dist, points, star_map.shape[1:], prob=prob)


def decode_speed(repeats: int) -> None:
    labels = mosaic(val_masks())
    maps = degrade(make_targets(labels, HEADS), scale=SCALE)
    decode(maps, "flow")  # numba compilation and cellpose import, not timed
    print(f"1024x1024 mosaic, {len(np.unique(labels)) - 1} nuclei, best of {repeats}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':40s} {'wall s':>7s} {'CPU s':>7s} {'AP@0.5':>7s} {'AP@0.75':>7s}")
    runs = [(name, lambda m=mode, t=th: decode(maps, m, t)) for name, mode, th in RUNS]
    runs.append(("star, stardist's dense NMS (reference)", lambda: stardist_dense(maps["star"])))
    for name, fn in runs:
        (wall, cpu), pred = best_time(fn, repeats)
        aps = [average_precision([labels], [pred], t) for t in (0.5, 0.75)]
        print(f"{name:40s} {wall:7.2f} {cpu:7.2f} {aps[0]:7.3f} {aps[1]:7.3f}")


def tune_speed(n: int) -> None:
    from cellvit_cli.training.tune import tune_thresholds

    labels = val_masks(n)
    maps = [degrade(make_targets(lab, HEADS), scale=SCALE) for lab in labels]
    for mode in ("star", "flow", "boundary", "fused"):
        (wall, cpu), tuned = best_time(lambda m=mode: tune_thresholds(maps, labels, [m]), 1)
        print(f"tune {mode} on {n} images: {wall:.0f} s wall, {cpu:.0f} s CPU, {tuned[mode]}, "
              f"AP@0.5 {tuned['scores'][mode]['ap50']:.3f}")


def roundtrip(n: int) -> None:
    labels = val_masks(n)
    maps = [make_targets(lab, HEADS) for lab in labels]
    print(f"round trip on {n} validation images, {sum(lab.max() for lab in labels)} nuclei")
    for mode in ("star", "flow", "boundary", "fused"):
        preds = [decode(m, mode) for m in maps]
        aps = [average_precision(labels, preds, t) for t in (0.5, 0.75, 0.9)]
        print(f"{mode:10s} AP@0.5 {aps[0]:.3f}  AP@0.75 {aps[1]:.3f}  AP@0.9 {aps[2]:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tune", type=int, default=0, metavar="N",
                        help="also time threshold tuning on N validation images")
    parser.add_argument("--roundtrip", type=int, default=0, metavar="N",
                        help="report the round-trip AP on N validation images instead")
    args = parser.parse_args()
    if args.roundtrip:
        roundtrip(args.roundtrip)
        sys.exit()
    decode_speed(args.repeats)
    if args.tune:
        tune_speed(args.tune)
