"""Unit tests of decoding: library oracles, invariants, edge cases and input checks."""

import numpy as np
import pytest
from skimage.draw import disk
from stardist import non_maximum_suppression, polygons_to_label
from stardist.matching import matching

from cellvit_cli.postprocess import (
    DEFAULT_THRESHOLDS,
    auto_mode,
    decode,
    mode_thresholds,
    required_heads,
)
from cellvit_cli.postprocess.boundary import decode_boundary
from cellvit_cli.postprocess.flow import (
    decode_flow,
    flow_errors,
    follow_flows,
    remove_bad_flows,
)
from cellvit_cli.postprocess.star import (
    candidate_points,
    decode_star,
    polygons_to_labels,
    star_nms,
)
from cellvit_cli.registry import HEADS, MODES, head_channels
from cellvit_cli.targets import make_targets

SHAPE = (96, 112)
N_RAYS = 16
STAR, FLOW, BOUNDARY = (DEFAULT_THRESHOLDS[mode] for mode in ("star", "flow", "boundary"))


@pytest.fixture(scope="module")
def labels():
    """Eight discs, two pairs of them touching, one cut by the image border."""
    out = np.zeros(SHAPE, np.int32)
    centres = [(20, 20), (20, 35), (60, 30), (70, 75), (70, 89), (25, 80), (90, 55), (48, 2)]
    for i, (y, x) in enumerate(centres, start=1):
        out[disk((y, x), 8, shape=SHAPE)] = i
    return out


@pytest.fixture(scope="module")
def maps(labels):
    return make_targets(labels, HEADS, n_rays=N_RAYS)


def _ap(true_labels, pred_labels):
    return matching(true_labels, pred_labels, thresh=0.5).accuracy


# ---- decode, modes and thresholds -------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_decode_targets_exactly(mode, labels, maps):
    pred = decode(maps, mode)
    assert pred.dtype == np.int32 and pred.shape == SHAPE
    assert np.array_equal(np.unique(pred), np.arange(pred.max() + 1))  # 0, 1..N without gaps
    assert _ap(labels, pred) == 1.0


@pytest.mark.parametrize("mode", MODES)
def test_empty_maps_give_empty_labels(mode):
    maps = {head: np.zeros((head_channels(head, N_RAYS), *SHAPE), np.float32) for head in HEADS}
    pred = decode(maps, mode)
    assert pred.dtype == np.int32 and pred.shape == SHAPE and not pred.any()


def test_decode_needs_the_heads_of_its_mode(maps):
    with pytest.raises(ValueError, match="needs the star/boundary"):
        decode({"star": maps["star"]}, "fused")
    with pytest.raises(ValueError, match="unknown mode"):
        decode(maps, "watershed")


@pytest.mark.parametrize("bad, match", [
    (np.zeros((3, 8, 8), np.uint8), "float"),
    (np.zeros((8, 8), np.float32), "3 dimensions"),
    (np.zeros((2, 8, 8), np.float32), "channels"),
    (np.zeros((4, 8, 8), np.float32), "channels"),
])
def test_decode_checks_maps(bad, match):
    with pytest.raises(ValueError, match=match):
        decode({"flow": bad}, "flow")


def test_decode_checks_shapes_agree():
    maps = {"star": np.zeros((5, 8, 8), np.float32), "boundary": np.zeros((2, 8, 9), np.float32)}
    with pytest.raises(ValueError, match="differ"):
        decode(maps, "fused")


def test_decoders_check_their_arrays():
    with pytest.raises(ValueError, match="shape"):
        decode_star(np.zeros((8, 8), np.float32), np.zeros((4, 8, 9), np.float32), **STAR)
    with pytest.raises(ValueError, match=r"\(2, Y, X\)"):
        decode_flow(np.zeros((8, 8), np.float32), np.zeros((3, 8, 8), np.float32), **FLOW)
    with pytest.raises(ValueError, match="float"):
        decode_boundary(np.zeros((8, 8), bool), np.zeros((8, 8), np.float32), **BOUNDARY)


def test_thresholds_take_defaults_and_refuse_unknown_names():
    thresholds = {"star": {"nms_thresh": 0.3}, "scores": {}, "default_mode": "star"}
    th = mode_thresholds("star", thresholds)
    assert th == {"prob_thresh": DEFAULT_THRESHOLDS["star"]["prob_thresh"], "nms_thresh": 0.3}
    assert mode_thresholds("flow", None) == DEFAULT_THRESHOLDS["flow"]
    assert mode_thresholds("flow", {"flow": {"flow_thresh": None}})["flow_thresh"] is None
    with pytest.raises(ValueError, match="prob_tresh"):
        mode_thresholds("star", {"star": {"prob_tresh": 0.3}})


def test_required_heads():
    assert required_heads("star") == ("star",)
    assert set(required_heads("fused")) == {"star", "boundary"}
    assert set(DEFAULT_THRESHOLDS) == set(MODES)


def test_auto_mode():
    assert auto_mode(["boundary", "flow"]) == "flow"
    assert auto_mode(["star", "flow", "boundary"], {"default_mode": "fused"}) == "fused"
    assert auto_mode(["flow"], {"default_mode": "fused"}) == "flow"  # tuned mode lacks a head
    assert auto_mode(["boundary"], {"default_mode": "boundary"}) == "boundary"
    with pytest.raises(ValueError, match="no decoding mode"):
        auto_mode([])


# ---- star ----------------------------------------------------------------------------------

def test_star_with_every_pixel_equals_stardist(maps, labels):
    """block=1 is stardist's dense non_maximum_suppression + polygons_to_label (no ties in prob:
    stardist breaks them in no fixed order)."""
    rng = np.random.default_rng(0)
    prob = (maps["star"][0] + rng.uniform(0, 1e-3, SHAPE)).astype(np.float32)
    dist = maps["star"][1:]
    points, scores, rays = non_maximum_suppression(np.moveaxis(dist, 0, -1), prob, nms_thresh=0.4,
                                                   prob_thresh=0.3)
    expected = polygons_to_label(rays, points, SHAPE, prob=scores)
    ours = decode_star(prob, dist, prob_thresh=0.3, nms_thresh=0.4, block=1)
    assert expected.max() == 8 and np.array_equal(expected > 0, ours > 0)
    assert matching(expected, ours, thresh=0.999).accuracy == 1.0


def test_candidate_points_are_block_maxima():
    prob = np.zeros((8, 8), np.float32)
    prob[3, 2], prob[2, 3], prob[2, 4], prob[5, 5] = 0.9, 0.85, 0.8, 0.4
    assert candidate_points(prob, 0.5, block=2, radius=0).tolist() == [[3, 2], [2, 4]]
    assert candidate_points(prob, 0.3, block=4, radius=0).tolist() == [[3, 2], [2, 4], [5, 5]]
    assert len(candidate_points(prob, 0.3, block=1, radius=0)) == 4
    prob[0, 0] = prob[7, 7] = 1.0  # within the border of 2
    assert len(candidate_points(prob, 0.95, block=2, radius=0)) == 0


def test_candidate_points_are_local_maxima_of_eligible_pixels():
    prob = np.zeros((10, 10), np.float32)
    prob[4, 4], prob[4, 5], prob[7, 7] = 0.9, 0.8, 0.6  # (4, 5) is beside a higher pixel
    assert candidate_points(prob, 0.5, block=1).tolist() == [[4, 4], [7, 7]]
    prob[1, 4] = 1.0  # in the border: not a candidate, and it hides nothing
    prob[2, 4] = 0.7
    assert candidate_points(prob, 0.5, block=1).tolist() == [[2, 4], [4, 4], [7, 7]]


def test_star_nms_at_a_higher_threshold_is_a_filter(maps):
    """What tune relies on: NMS at prob_thresh b equals NMS at a < b, then keeping prob > b."""
    prob, dist = maps["star"][0], maps["star"][1:]
    low = star_nms(prob, dist, prob_thresh=0.2, nms_thresh=0.3)
    high = star_nms(prob, dist, prob_thresh=0.6, nms_thresh=0.3)
    filtered = low.above(0.6)
    assert np.array_equal(filtered.points, high.points)
    assert np.array_equal(polygons_to_labels(filtered, SHAPE), polygons_to_labels(high, SHAPE))


# ---- flow ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prob_thresh, flow_thresh", [(0.5, 0.4), (0.3, 0.0), (0.6, 0.1)])
def test_flow_equals_cellpose_compute_masks(maps, prob_thresh, flow_thresh):
    from cellpose.dynamics import compute_masks

    rng = np.random.default_rng(0)
    noisy = (maps["flow"] + rng.normal(0, 0.1, maps["flow"].shape)).astype(np.float32)
    prob, flows = noisy[0], noisy[1:]
    expected = compute_masks(5 * flows, prob, cellprob_threshold=prob_thresh,
                             flow_threshold=flow_thresh, min_size=10)
    assert np.array_equal(decode_flow(prob, flows, prob_thresh, flow_thresh, min_size=10), expected)


def test_flow_thresh_none_or_zero_skips_the_check(maps):
    prob, flows = maps["flow"][0], maps["flow"][1:]
    wrong = -flows  # flows away from the centres: every mask fails the check
    assert decode_flow(prob, wrong, 0.5, flow_thresh=0.4).max() == 0
    unchecked = decode_flow(prob, wrong, 0.5, flow_thresh=None)
    assert unchecked.max() > 0
    assert np.array_equal(unchecked, decode_flow(prob, wrong, 0.5, flow_thresh=0))


def test_flow_steps_vary_flow_thresh_on_one_following(maps):
    prob, flows = maps["flow"][0], maps["flow"][1:]
    masks = follow_flows(prob, flows, 0.5)
    errors = flow_errors(masks, flows)
    assert errors.shape == (masks.max(),) and errors.max() < 0.1
    for flow_thresh in (0.0, 0.4):
        expected = decode_flow(prob, flows, 0.5, flow_thresh)
        assert np.array_equal(remove_bad_flows(masks, errors, flow_thresh), expected)


# ---- boundary ------------------------------------------------------------------------------

def test_boundary_splits_touching_squares():
    labels = np.zeros((20, 30), np.int32)
    labels[4:14, 3:13], labels[4:14, 13:23] = 1, 2
    fg, boundary = make_targets(labels, ("boundary",))["boundary"]
    assert _ap(labels, decode_boundary(fg, boundary, **BOUNDARY)) == 1.0


def test_boundary_keeps_unseeded_pieces_and_drops_tiny_ones():
    fg = np.zeros((20, 20), np.float32)
    fg[2:4, 2:14] = 1    # 2 px thick: all boundary, no seed, 24 px
    fg[10, 10] = 1       # a single pixel
    boundary = np.zeros_like(fg)
    boundary[2:4, 2:14] = 1
    pred = decode_boundary(fg, boundary, **BOUNDARY, min_size=10)
    assert pred.max() == 1 and (pred == 1).sum() == 24


def test_boundary_tiny_seeds_are_flooded_from_a_neighbour():
    fg = np.zeros((20, 20), np.float32)
    fg[2:18, 2:18] = 1
    boundary = np.ones_like(fg)
    boundary[4:16, 4:12] = 0    # the real interior
    boundary[14, 15] = 0        # a one-pixel seed of noise
    pred = decode_boundary(fg, boundary, **BOUNDARY, min_seed_size=4)
    assert pred.max() == 1 and (pred == 1).sum() == 16 * 16


def test_star_nms_runs_on_one_openmp_thread_and_restores_it():
    from cellvit_cli.postprocess.star import _one_openmp_thread, _stardist_openmp

    gomp = _stardist_openmp()
    if gomp is None:
        pytest.skip("this stardist build has no bundled libgomp")
    before = gomp.omp_get_max_threads()
    with _one_openmp_thread():
        assert gomp.omp_get_max_threads() == 1
    assert gomp.omp_get_max_threads() == before
