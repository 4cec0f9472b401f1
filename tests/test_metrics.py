import numpy as np
import pytest
from scipy import ndimage as ndi
from stardist.matching import matching, matching_dataset

from cellvit_cli import metrics
from cellvit_cli.io import read_labels
from conftest import SHARED_DATA

THRESHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
# our name -> stardist's name
STARDIST_NAMES = {
    "tp": "tp", "fp": "fp", "fn": "fn", "n_true": "n_true", "n_pred": "n_pred",
    "precision": "precision", "recall": "recall", "f1": "f1", "ap": "accuracy",
    "mean_matched_iou": "mean_matched_score", "mean_true_iou": "mean_true_score",
    "pq": "panoptic_quality",
}


def perturb(labels: np.ndarray, seed: int) -> np.ndarray:
    """Remove, merge, split and shift objects of a label image (a plausible prediction)."""
    rng = np.random.default_rng(seed)
    pred = labels.copy()
    ids = rng.permutation(np.unique(labels)[1:])
    for label in ids[:8]:  # removed
        pred[pred == label] = 0
    for label in ids[8:14]:  # merged into a touching or nearby neighbour
        ring = ndi.binary_dilation(labels == label, iterations=3) & (labels != label)
        neighbours = np.unique(labels[ring & (labels > 0)])
        if neighbours.size:
            pred[pred == neighbours[0]] = label
    for label in ids[14:20]:  # split in two along its centre row
        rows = np.nonzero(pred == label)[0]
        if rows.size:
            half = (pred == label) & (np.arange(pred.shape[0])[:, None] > np.median(rows))
            pred[half] = pred.max() + 1
    for label in ids[20:60]:  # shifted by a few pixels
        mask = pred == label
        pred[mask] = 0
        shifted = np.roll(mask, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        pred[shifted & (pred == 0)] = label
    return pred


@pytest.fixture(scope="module")
def dataset(nuclei):
    """Four ground-truth quarters of the stardist sample and perturbed predictions."""
    labels = nuclei[1]
    gts = [labels[:256, :256], labels[:256, 256:], labels[256:, :256], labels[256:, 256:]]
    preds = [perturb(gt, seed) for seed, gt in enumerate(gts)]
    return gts, preds


def _assert_same(ours: dict, theirs) -> None:
    for name, stardist_name in STARDIST_NAMES.items():
        assert ours[name] == pytest.approx(getattr(theirs, stardist_name), abs=1e-6), name


def test_image_matches_stardist(nuclei):
    gt = nuclei[1]
    pred = perturb(gt, seed=42)
    overlap = metrics.label_overlap(gt, pred)
    ours = metrics.match_counts(overlap, THRESHS)
    theirs = matching(gt, pred, thresh=THRESHS)
    for counts, stats in zip(ours, theirs):
        row = metrics.scores(counts) | {"tp": counts.tp, "fp": counts.fp, "fn": counts.fn,
                                        "n_true": counts.n_true, "n_pred": counts.n_pred}
        _assert_same(row, stats)


def test_matched_pairs_match_stardist(nuclei):
    gt = nuclei[1]
    pred = perturb(gt, seed=3)
    stats = matching(gt, pred, thresh=0.5, report_matches=True)
    expected = {pair for pair, tp in zip(stats.matched_pairs,
                                         np.isin(np.arange(len(stats.matched_pairs)),
                                                 stats.matched_tps)) if tp}
    found = metrics.match(metrics.label_overlap(gt, pred), 0.5)
    assert set(zip(found.true_ids.tolist(), found.pred_ids.tolist())) == expected


@pytest.mark.parametrize("by_image", [False, True])
def test_dataset_matches_stardist(dataset, by_image):
    gts, preds = dataset
    result = metrics.evaluate_pairs(zip(gts, preds), THRESHS)
    ours = metrics.averaged_scores(result) if by_image else metrics.pooled_scores(result)
    theirs = matching_dataset(gts, preds, thresh=THRESHS, by_image=by_image,
                              show_progress=False)
    for row, stats in zip(ours, theirs):
        _assert_same(row, stats)


def test_average_precision_is_pooled_accuracy(dataset):
    gts, preds = dataset
    for thresh in (0.5, 0.75):
        expected = matching_dataset(gts, preds, thresh=thresh, show_progress=False).accuracy
        assert metrics.average_precision(gts, preds, thresh) == pytest.approx(expected, abs=1e-9)
    assert metrics.average_precision(gts, gts) == 1.0
    with pytest.raises(ValueError):
        metrics.average_precision(gts, preds[:2])


def test_large_and_sparse_label_values(nuclei):
    gt = nuclei[1].astype(np.int64)
    pred = perturb(nuclei[1], seed=5).astype(np.int64)
    big_gt, big_pred = gt * 10_000_019, pred * 7_777_777
    expected = metrics.match_counts(metrics.label_overlap(gt, pred))
    assert metrics.match_counts(metrics.label_overlap(big_gt, big_pred)) == expected
    assert metrics.aji(big_gt, big_pred) == metrics.aji(gt, pred)
    # label values too spread out for a dense pair table: the sparse counting path
    far_gt, far_pred = np.where(gt > 0, gt + 3000, 0), np.where(pred > 0, pred + 4000, 0)
    assert metrics.match_counts(metrics.label_overlap(far_gt, far_pred)) == expected
    assert metrics.aji(far_gt, far_pred) == metrics.aji(gt, pred)


def _squares() -> tuple[np.ndarray, np.ndarray]:
    """Two 10x10 GT squares; pred: the first exactly, the second shifted by 5 px, and a
    4x4 false positive."""
    gt = np.zeros((40, 60), np.int32)
    gt[5:15, 5:15] = 1
    gt[5:15, 30:40] = 2
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 7
    pred[5:15, 35:45] = 3
    pred[30:34, 50:54] = 9
    return gt, pred


def test_hand_computed_two_squares():
    gt, pred = _squares()
    overlap = metrics.label_overlap(gt, pred)
    assert sorted(zip(overlap.true_ids, overlap.pred_ids, overlap.intersection)) == [
        (1, 7, 100), (2, 3, 50)]
    at_05, at_03 = metrics.match_counts(overlap, (0.5, 0.3))
    assert (at_05.tp, at_05.fp, at_05.fn) == (1, 2, 1)
    assert metrics.scores(at_05) == pytest.approx({
        "precision": 1 / 3, "recall": 1 / 2, "f1": 2 / 5, "ap": 1 / 4,
        "mean_matched_iou": 1.0, "mean_true_iou": 1 / 2, "pq": 1 / 2.5})
    assert (at_03.tp, at_03.fp, at_03.fn) == (2, 1, 0)
    assert metrics.scores(at_03) == pytest.approx({
        "precision": 2 / 3, "recall": 1.0, "f1": 4 / 5, "ap": 2 / 3,
        "mean_matched_iou": 2 / 3, "mean_true_iou": 2 / 3, "pq": (4 / 3) / 2.5})


def test_hand_computed_aji():
    gt, pred = _squares()
    assert metrics.aji(gt, pred) == pytest.approx((100 + 50) / (100 + 150 + 16))
    # one prediction covering both GT objects serves both: its area counts twice
    merged = np.where(gt > 0, 5, 0)
    assert metrics.aji(gt, merged) == pytest.approx(200 / (200 + 200))


def _aji_reference(gt: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al.'s AJI written out object by object with dense masks."""
    pred_ids = [p for p in np.unique(pred) if p]
    used, inter_sum, union_sum = set(), 0, 0
    for g in np.unique(gt)[1:]:
        mask = gt == g
        ious = [((mask & (pred == p)).sum() / (mask | (pred == p)).sum(), -p) for p in pred_ids]
        best_iou, best = max(ious) if ious else (0, 0)
        if best_iou == 0:
            union_sum += mask.sum()
            continue
        used.add(-best)
        inter_sum += (mask & (pred == -best)).sum()
        union_sum += (mask | (pred == -best)).sum()
    union_sum += sum((pred == p).sum() for p in pred_ids if p not in used)
    return inter_sum / union_sum


def test_aji_matches_reference(nuclei):
    gt = nuclei[1][:200, :200]
    pred = perturb(gt, seed=7)
    assert metrics.aji(gt, pred) == pytest.approx(_aji_reference(gt, pred), abs=1e-12)


def test_assignment_maximises_matches_below_half():
    """g1 overlaps p1 (IoU 7/16) and p2 (3/10), g2 overlaps p1 (6/17): at 0.25 the matching
    with most pairs is g1-p2, g2-p1, not the greedy g1-p1."""
    gt = np.zeros((10, 30), np.int32)
    gt[:, 0:10], gt[:, 10:20] = 1, 2
    pred = np.zeros_like(gt)
    pred[:, 0:3], pred[:, 3:16] = 2, 1
    found = metrics.match(metrics.label_overlap(gt, pred), 0.25)
    assert sorted(zip(found.true_ids, found.pred_ids)) == [(1, 2), (2, 1)]
    assert found.iou.sum() == pytest.approx(3 / 10 + 6 / 17)
    counts = metrics.match_counts(metrics.label_overlap(gt, pred), (0.25, 0.5))
    assert [c.tp for c in counts] == [2, 0]
    stats = matching(gt, pred, thresh=0.25)
    assert stats.tp == 2 and stats.mean_matched_score == pytest.approx((3 / 10 + 6 / 17) / 2)


def test_empty_images():
    empty = np.zeros((20, 20), np.int32)
    two = empty.copy()
    two[2:6, 2:6], two[10:15, 10:15] = 1, 2
    both_empty = metrics.scores(metrics.match_counts(metrics.label_overlap(empty, empty))[0])
    assert all(value == 1.0 for value in both_empty.values())
    for gt, pred in ((empty, two), (two, empty)):
        counts = metrics.match_counts(metrics.label_overlap(gt, pred), (0.5,))[0]
        assert counts.tp == 0 and counts.fp + counts.fn == 2
        assert all(value == 0.0 for value in metrics.scores(counts).values())
    assert metrics.aji(empty, empty) == 1.0
    assert metrics.aji(empty, two) == 0.0 and metrics.aji(two, empty) == 0.0


def test_empty_image_does_not_change_pooled_counts():
    gt, pred = _squares()
    empty = np.zeros_like(gt)
    alone = metrics.pooled_scores(metrics.evaluate_pairs([(gt, pred)], (0.5,)))
    with_empty = metrics.evaluate_pairs([(gt, pred), (empty, empty)], (0.5,))
    assert metrics.pooled_scores(with_empty) == alone
    averaged = metrics.averaged_scores(with_empty)[0]
    assert averaged["ap"] == pytest.approx((1 / 4 + 1) / 2)
    assert metrics.dataset_aji(with_empty)["pooled"] == metrics.aji(gt, pred)


def test_bad_label_pairs():
    labels = np.zeros((5, 5), np.int32)
    with pytest.raises(ValueError, match="shape"):
        metrics.label_overlap(labels, np.zeros((5, 6), np.int32))
    with pytest.raises(ValueError, match="integers"):
        metrics.label_overlap(labels, labels.astype(np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        metrics.label_overlap(labels - 1, labels)
    with pytest.raises(ValueError, match="iou_thresh"):
        metrics.match(metrics.label_overlap(labels, labels), 0.0)


@pytest.mark.shared_data
def test_dsb_test_masks_match_stardist():
    """Real DSB2018 test masks (all modalities) and perturbed predictions, pooled."""
    paths = sorted((SHARED_DATA / "test" / "masks").glob("*.tif"))[::5]
    gts = [read_labels(path) for path in paths]
    preds = [perturb(gt, seed) for seed, gt in enumerate(gts)]
    result = metrics.evaluate_pairs(zip(gts, preds), THRESHS)
    theirs = matching_dataset(gts, preds, thresh=THRESHS, show_progress=False)
    for row, stats in zip(metrics.pooled_scores(result), theirs):
        _assert_same(row, stats)
