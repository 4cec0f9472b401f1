"""Threshold tuning on small maps: format, agreement with decode, better than defaults."""

import numpy as np
import pytest
from skimage.draw import disk

from cellvit_cli.metrics import average_precision
from cellvit_cli.postprocess import DEFAULT_THRESHOLDS, decode
from cellvit_cli.registry import HEADS, MODES
from cellvit_cli.targets import make_targets
from cellvit_cli.training.tune import BOUNDS, fine_grid, grid_settings, tune_thresholds

SHAPE = (80, 96)
SMALL_GRIDS = {"star": {"prob_thresh": (0.2, 0.5), "nms_thresh": (0.3, 0.5)},
               "flow": {"prob_thresh": (0.2, 0.5), "flow_thresh": (0.0, 0.4)},
               "boundary": {"fg_thresh": (0.2, 0.5), "boundary_thresh": (0.2, 0.4)},
               "fused": {"fg_thresh": (0.2, 0.5), "boundary_thresh": (0.2, 0.4)}}


def _labels(seed):
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, np.int32)
    for i in range(1, 9):
        centre = tuple(rng.integers(8, np.array(SHAPE) - 8))
        labels[disk(centre, rng.integers(5, 9), shape=SHAPE)] = i
    return labels


def _dim(maps, scale):
    """Maps whose probabilities are all scaled by `scale` (a model under-confident everywhere)."""
    out = {head: m.copy() for head, m in maps.items()}
    for m in out.values():
        m[0] *= scale
    return out


@pytest.fixture(scope="module")
def data():
    labels = [_labels(seed) for seed in (1, 2)]
    maps = [_dim(make_targets(lab, HEADS, n_rays=16), 0.4) for lab in labels]
    return maps, labels


@pytest.fixture(scope="module")
def tuned(data):
    maps, labels = data
    return tune_thresholds(maps, labels, MODES, grids=SMALL_GRIDS)


def test_tuned_thresholds_have_the_thresholds_json_format(tuned):
    assert set(tuned) == set(MODES) | {"scores", "default_mode"}
    for mode in MODES:
        assert set(tuned[mode]) == set(DEFAULT_THRESHOLDS[mode])
        assert all(BOUNDS[0] <= v <= BOUNDS[1] for v in tuned[mode].values())
        assert set(tuned["scores"][mode]) == {"ap50", "ap75", "ap90", "ap_50_90", "n_true"}
    assert tuned["default_mode"] in MODES
    best = max(s["ap50"] for s in tuned["scores"].values())
    assert tuned["scores"][tuned["default_mode"]]["ap50"] >= best - 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_tuned_scores_are_what_decode_gives(mode, data, tuned):
    """The cached decoders of the search agree with postprocess.decode."""
    maps, labels = data
    ap = average_precision(labels, [decode(m, mode, tuned) for m in maps], 0.5)
    assert ap == pytest.approx(tuned["scores"][mode]["ap50"])


@pytest.mark.parametrize("mode", MODES)
def test_tuning_beats_defaults_on_dim_maps(mode, data, tuned):
    maps, labels = data
    default_ap = average_precision(labels, [decode(m, mode) for m in maps], 0.5)
    assert tuned["scores"][mode]["ap50"] >= 0.9 > default_ap


def test_tune_checks_its_inputs(data):
    maps, labels = data
    with pytest.raises(ValueError, match="equally many"):
        tune_thresholds(maps, labels[:1], ["star"])
    with pytest.raises(ValueError, match="needs the flow"):
        tune_thresholds([{"star": m["star"]} for m in maps], labels, ["flow"])


def test_grids():
    assert grid_settings({"a": (1, 2)}, {"b": 0}) == [(("a", 1), ("b", 0)), (("a", 2), ("b", 0))]
    assert fine_grid({"prob_thresh": 0.5, "flow_thresh": 0.0},
                     {"prob_thresh": 0.05, "flow_thresh": 0.1}) == {
        "prob_thresh": (0.45, 0.5, 0.55), "flow_thresh": (0.0, 0.1)}
