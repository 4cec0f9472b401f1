"""Time dataset evaluation: cellvit_cli.metrics against stardist.matching.matching_dataset.

50 label images of 1024x1024 (the stardist sample tiled 2x2 with flips, ~500 nuclei each)
and perturbed predictions (5% of objects dropped, some pairs merged, all shifted by 1-2 px),
scored at the IoU thresholds 0.50:0.05:0.95.

    python benchmarks/evaluate_speed.py [--images 50]
"""

import argparse
import time

import numpy as np
from stardist.data import test_image_nuclei_2d
from stardist.matching import matching_dataset

from cellvit_cli import metrics


def make_gt(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(2Y, 2X) labels: four randomly flipped copies of `labels`, distinct ids."""
    tiles, offset = [], 0
    for _ in range(4):
        tile = labels[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
        tiles.append(np.where(tile > 0, tile + offset, 0))
        offset += int(labels.max())
    return np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]]).astype(np.int32)


def make_pred(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Drop 5% of the objects, merge 2% into another object, shift by 1-2 px."""
    ids = np.unique(gt)[1:]
    lut = np.arange(gt.max() + 1, dtype=np.int32)
    chosen = rng.permutation(ids)
    n_drop, n_merge = len(ids) // 20, len(ids) // 50
    lut[chosen[:n_drop]] = 0
    lut[chosen[n_drop:n_drop + n_merge]] = chosen[n_drop + n_merge:n_drop + 2 * n_merge]
    return np.roll(lut[gt], tuple(rng.integers(1, 3, size=2)), axis=(0, 1))


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    labels = test_image_nuclei_2d(return_mask=True)[1].astype(np.int32)
    gts = [make_gt(labels, rng) for _ in range(args.images)]
    preds = [make_pred(gt, rng) for gt in gts]
    threshs = metrics.DEFAULT_IOU_THRESHS
    n_objects = sum(len(np.unique(g)) - 1 for g in gts)
    print(f"{len(gts)} images of {gts[0].shape}, {n_objects} objects, {len(threshs)} thresholds")

    matching_dataset(gts[:1], preds[:1], thresh=0.5, show_progress=False)  # numba warm-up
    result, ours = timed(metrics.evaluate_pairs, zip(gts, preds), threshs)
    pooled = metrics.pooled_scores(result)
    _, ap_only = timed(metrics.average_precision, gts, preds, 0.5)
    theirs_stats, theirs = timed(matching_dataset, gts, preds, thresh=threshs,
                                 show_progress=False)
    worst = max(abs(row["ap"] - stats.accuracy) for row, stats in zip(pooled, theirs_stats))
    print(f"cellvit_cli.metrics.evaluate_pairs (all thresholds + AJI): {ours:.2f} s")
    print(f"cellvit_cli.metrics.average_precision (0.5 only):          {ap_only:.2f} s")
    print(f"stardist.matching.matching_dataset (all thresholds):       {theirs:.2f} s")
    print(f"speed-up: {theirs / ours:.1f}x; largest AP difference: {worst:.2e}")
    print(f"AP@0.5 {pooled[0]['ap']:.4f}, AJI {metrics.dataset_aji(result)['pooled']:.4f}")


if __name__ == "__main__":
    main()
