"""Matching of instance label images and the scores built on it (pure functions).

Objects of a ground-truth and a predicted label image are matched one to one on their IoU:
a pair can match when IoU >= `iou_thresh`; for `iou_thresh` > 0.5 such pairs never share an
object, below that the matching with the most pairs (ties: the largest summed IoU) is taken
by Hungarian assignment, as `stardist.matching.matching` does.

Scores and their names (stardist's name in brackets where it differs):
precision, recall, f1, `ap` = TP / (TP + FP + FN) (stardist "accuracy", cellpose "AP"),
`mean_matched_iou` = summed IoU of matches / TP (SQ, stardist "mean_matched_score"),
`mean_true_iou` = summed IoU of matches / n_true ("mean_true_score"),
`pq` = summed IoU of matches / (TP + FP/2 + FN/2) = SQ * RQ ("panoptic_quality").
A ratio whose denominator is zero is 1 when there is nothing to find and nothing was
predicted (a perfect empty image), otherwise 0.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_IOU_THRESHS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
SCORE_NAMES = ("precision", "recall", "f1", "ap", "mean_matched_iou", "mean_true_iou", "pq")
_MAX_DENSE_PAIRS = 1 << 22  # pair table of at most 4M counts (32 MB)
_MAX_DIRECT_LABEL = 1 << 20  # larger label values are compacted first


@dataclass(frozen=True)
class Overlap:
    """Sparse overlap of two label images.

    true_ids, pred_ids: (K,) int64 labels of each overlapping pair;
    intersection: (K,) int64 pixel counts; iou: (K,) float64;
    true_labels, pred_labels: (n,) int64 labels of all objects, ascending;
    true_areas, pred_areas: (n,) int64 their areas in pixels.
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    intersection: np.ndarray
    iou: np.ndarray
    true_labels: np.ndarray
    pred_labels: np.ndarray
    true_areas: np.ndarray
    pred_areas: np.ndarray


@dataclass(frozen=True)
class Matching:
    """One-to-one matches at one IoU threshold: (M,) original labels and their IoU."""

    iou_thresh: float
    true_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray


@dataclass(frozen=True)
class MatchCounts:
    """What scores are computed from; counts add up over images (see `pool`)."""

    iou_thresh: float
    n_true: int
    n_pred: int
    tp: int
    sum_matched_iou: float

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp


@dataclass
class DatasetScores:
    """Counts of every image at every threshold, and AJI parts per image.

    counts[i][t]: MatchCounts of image i at iou_threshs[t];
    aji_parts[i]: (intersection, union) pixel sums of image i.
    """

    iou_threshs: tuple[float, ...]
    counts: list[list[MatchCounts]] = field(default_factory=list)
    aji_parts: list[tuple[int, int]] = field(default_factory=list)


def _check_pair(true_labels: np.ndarray, pred_labels: np.ndarray) -> None:
    for name, labels in (("ground truth", true_labels), ("prediction", pred_labels)):
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name} labels must be integers, got {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{name} labels must be non-negative")
    if true_labels.shape != pred_labels.shape:
        raise ValueError(f"label images differ in shape: ground truth {true_labels.shape}, "
                         f"prediction {pred_labels.shape}")


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Flat labels small enough to count on: (flat, None) if the values are already small,
    else (codes 0..n, (n+1,) original label of each code, 0 first)."""
    flat = labels.ravel()
    if flat.size == 0 or int(flat.max()) < _MAX_DIRECT_LABEL:
        return flat, None
    ids, codes = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        ids, codes = np.r_[0, ids], codes + 1
    return codes.reshape(-1), ids


def _pair_counts(true_flat: np.ndarray, pred_flat: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Count pixels per (true, pred) label pair.

    Returns rows, cols, intersections of the overlapping object pairs (K,) and the areas
    of all label values (n_true + 1,), (n_pred + 1,) (0 = background).
    """
    n_rows = int(true_flat.max(initial=0)) + 1
    n_cols = int(pred_flat.max(initial=0)) + 1
    dtype = np.int32 if n_rows * n_cols < 2**31 else np.int64
    if n_rows * n_cols <= _MAX_DENSE_PAIRS:
        codes = true_flat.astype(dtype) * dtype(n_cols) + pred_flat.astype(dtype)
        table = np.bincount(codes, minlength=n_rows * n_cols).reshape(n_rows, n_cols)
        rows, cols = np.nonzero(table[1:, 1:])
        return rows + 1, cols + 1, table[rows + 1, cols + 1], table.sum(1), table.sum(0)
    both = (true_flat > 0) & (pred_flat > 0)
    codes = true_flat[both].astype(np.int64) * n_cols + pred_flat[both]
    codes, counts = np.unique(codes, return_counts=True)
    return (codes // n_cols, codes % n_cols, counts,
            np.bincount(true_flat, minlength=n_rows), np.bincount(pred_flat, minlength=n_cols))


def label_overlap(true_labels: np.ndarray, pred_labels: np.ndarray) -> Overlap:
    """Pixel overlap and IoU of every overlapping object pair (0 is background).

    true_labels, pred_labels: (Y, X) (any shape, equal) non-negative integer label images.
    """
    _check_pair(true_labels, pred_labels)
    true_flat, true_map = _compact(true_labels)
    pred_flat, pred_map = _compact(pred_labels)
    rows, cols, inter, true_areas, pred_areas = _pair_counts(true_flat, pred_flat)
    union = true_areas[rows] + pred_areas[cols] - inter
    true_present = np.flatnonzero(true_areas[1:]) + 1
    pred_present = np.flatnonzero(pred_areas[1:]) + 1

    def original(codes, mapping):
        return (codes if mapping is None else mapping[codes]).astype(np.int64)

    return Overlap(original(rows, true_map), original(cols, pred_map),
                   inter.astype(np.int64), inter / union,
                   original(true_present, true_map), original(pred_present, pred_map),
                   true_areas[true_present].astype(np.int64),
                   pred_areas[pred_present].astype(np.int64))


def _assign(true_ids: np.ndarray, pred_ids: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Indices of the pairs kept by a maximum matching (most pairs, then largest IoU sum)."""
    rows, row_index = np.unique(true_ids, return_inverse=True)
    cols, col_index = np.unique(pred_ids, return_inverse=True)
    if rows.size == true_ids.size and cols.size == pred_ids.size:
        return np.arange(true_ids.size)
    n_matched = min(rows.size, cols.size)
    costs = np.zeros((rows.size, cols.size))
    costs[row_index, col_index] = -1.0 - iou / (2 * n_matched)
    pair_at = np.full((rows.size, cols.size), -1)
    pair_at[row_index, col_index] = np.arange(true_ids.size)
    r, c = linear_sum_assignment(costs)
    kept = pair_at[r, c]
    return np.sort(kept[kept >= 0])


def match(overlap: Overlap, iou_thresh: float = 0.5) -> Matching:
    """One-to-one matching of objects with IoU >= `iou_thresh` (0 < iou_thresh <= 1)."""
    if not 0 < iou_thresh <= 1:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    candidates = np.flatnonzero(overlap.iou >= iou_thresh)
    true_ids, pred_ids = overlap.true_ids[candidates], overlap.pred_ids[candidates]
    iou = overlap.iou[candidates]
    if iou_thresh <= 0.5 and candidates.size:
        kept = _assign(true_ids, pred_ids, iou)
        true_ids, pred_ids, iou = true_ids[kept], pred_ids[kept], iou[kept]
    return Matching(float(iou_thresh), true_ids, pred_ids, iou)


def match_counts(overlap: Overlap, iou_threshs: Sequence[float] = DEFAULT_IOU_THRESHS
                 ) -> list[MatchCounts]:
    """MatchCounts of one image pair at each threshold."""
    n_true, n_pred = overlap.true_labels.size, overlap.pred_labels.size
    counts = []
    for thresh in iou_threshs:
        matching = match(overlap, thresh)
        counts.append(MatchCounts(float(thresh), n_true, n_pred, int(matching.iou.size),
                                  float(matching.iou.sum())))
    return counts


def pool(counts: Sequence[MatchCounts]) -> MatchCounts:
    """Sum counts of several images at the same threshold (all objects pooled)."""
    threshs = {c.iou_thresh for c in counts}
    if len(threshs) != 1:
        raise ValueError(f"cannot pool counts of different thresholds: {sorted(threshs)}")
    return MatchCounts(counts[0].iou_thresh, sum(c.n_true for c in counts),
                       sum(c.n_pred for c in counts), sum(c.tp for c in counts),
                       float(sum(c.sum_matched_iou for c in counts)))


def _ratio(numerator: float, denominator: float, empty: bool) -> float:
    """numerator / denominator; for denominator 0: 1.0 if `empty` (nothing at all) else 0."""
    if denominator > 0:
        return float(numerator / denominator)
    return 1.0 if empty else 0.0


def scores(counts: MatchCounts) -> dict[str, float]:
    """Scores of SCORE_NAMES from one MatchCounts (see the module docstring)."""
    tp, fp, fn = counts.tp, counts.fp, counts.fn
    empty = counts.n_true == 0 and counts.n_pred == 0
    return {
        "precision": _ratio(tp, tp + fp, empty),
        "recall": _ratio(tp, tp + fn, empty),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, empty),
        "ap": _ratio(tp, tp + fp + fn, empty),
        "mean_matched_iou": _ratio(counts.sum_matched_iou, tp, empty),
        "mean_true_iou": _ratio(counts.sum_matched_iou, counts.n_true, empty),
        "pq": _ratio(counts.sum_matched_iou, tp + fp / 2 + fn / 2, empty),
    }


def aji_parts(overlap: Overlap) -> tuple[int, int]:
    """(intersection, union) sums of the Aggregated Jaccard Index (Kumar et al. 2017).

    Each ground-truth object takes the prediction of highest IoU with it (lowest label on
    ties; a prediction may serve several); predictions taken by none add their area to
    the union, ground-truth objects overlapping nothing add theirs.
    """
    order = np.lexsort((overlap.pred_ids, -overlap.iou, overlap.true_ids))
    true_ids = overlap.true_ids[order]
    first = np.r_[True, true_ids[1:] != true_ids[:-1]] if true_ids.size else true_ids.astype(bool)
    best = order[first]
    inter = overlap.intersection[best]
    true_area = _areas_of(overlap.true_labels, overlap.true_areas, overlap.true_ids[best])
    pred_area = _areas_of(overlap.pred_labels, overlap.pred_areas, overlap.pred_ids[best])
    unused_pred = ~np.isin(overlap.pred_labels, overlap.pred_ids[best])
    unmatched_true = ~np.isin(overlap.true_labels, overlap.true_ids[best])
    union = (np.sum(true_area + pred_area - inter) + overlap.pred_areas[unused_pred].sum()
             + overlap.true_areas[unmatched_true].sum())
    return int(inter.sum()), int(union)


def _areas_of(labels: np.ndarray, areas: np.ndarray, ids: np.ndarray) -> np.ndarray:
    return areas[np.searchsorted(labels, ids)]


def aji_from_parts(intersection: int, union: int) -> float:
    """intersection / union; 1.0 when the union is empty (both images empty)."""
    return _ratio(intersection, union, union == 0)


def aji(true_labels: np.ndarray, pred_labels: np.ndarray) -> float:
    """Aggregated Jaccard Index of one image pair; 1.0 when both are empty."""
    return aji_from_parts(*aji_parts(label_overlap(true_labels, pred_labels)))


def evaluate_pairs(pairs, iou_threshs: Sequence[float] = DEFAULT_IOU_THRESHS) -> DatasetScores:
    """Match every (true_labels, pred_labels) pair of an iterable; labels are loaded lazily
    if `pairs` is a generator. Returns DatasetScores."""
    result = DatasetScores(tuple(float(t) for t in iou_threshs))
    for true_labels, pred_labels in pairs:
        overlap = label_overlap(np.asarray(true_labels), np.asarray(pred_labels))
        result.counts.append(match_counts(overlap, result.iou_threshs))
        result.aji_parts.append(aji_parts(overlap))
    return result


def pooled_scores(result: DatasetScores) -> list[dict[str, float]]:
    """Per threshold: counts summed over all images, then scores (stardist by_image=False)."""
    rows = []
    for t in range(len(result.iou_threshs)):
        counts = pool([image[t] for image in result.counts])
        rows.append(_counts_dict(counts) | scores(counts))
    return rows


def averaged_scores(result: DatasetScores) -> list[dict[str, float]]:
    """Per threshold: the mean over images of each image's scores; counts are summed."""
    rows = []
    for t in range(len(result.iou_threshs)):
        image_counts = [image[t] for image in result.counts]
        per_image = [scores(c) for c in image_counts]
        means = {k: float(np.mean([s[k] for s in per_image])) for k in SCORE_NAMES}
        rows.append(_counts_dict(pool(image_counts)) | means)
    return rows


def _counts_dict(counts: MatchCounts) -> dict:
    return {"iou_thresh": counts.iou_thresh, "n_true": counts.n_true, "n_pred": counts.n_pred,
            "tp": counts.tp, "fp": counts.fp, "fn": counts.fn}


def dataset_aji(result: DatasetScores) -> dict[str, float]:
    """AJI pooled (summed intersections / summed unions) and averaged over images."""
    inter = sum(i for i, _ in result.aji_parts)
    union = sum(u for _, u in result.aji_parts)
    per_image = [aji_from_parts(i, u) for i, u in result.aji_parts]
    return {"pooled": aji_from_parts(inter, union),
            "averaged": float(np.mean(per_image)) if per_image else 1.0}


def average_precision(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray],
                      iou_thresh: float = 0.5) -> float:
    """Pooled DSB-style AP = TP / (TP + FP + FN) over a data set at one IoU threshold.

    gts, preds: equally long sequences of (Y, X) integer label images.
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} predictions")
    counts = [match_counts(label_overlap(np.asarray(g), np.asarray(p)), (iou_thresh,))[0]
              for g, p in zip(gts, preds)]
    if not counts:
        raise ValueError("no images to score")
    return scores(pool(counts))["ap"]
