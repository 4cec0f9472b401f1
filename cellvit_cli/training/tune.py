"""Threshold tuning: per decoding mode, a grid search maximising pooled DSB AP@0.5.

Each mode's thresholds are searched on a coarse grid (COARSE_GRIDS), then on a fine grid of
the best value +- one FINE_STEPS step per threshold (settings already scored are not
decoded again). The criterion is pooled AP@0.5 (`cellvit_cli.metrics`, TP / (TP+FP+FN) over
all validation objects) rounded to 3 decimals; ties go to the higher AP averaged over IoU
0.5, 0.55, .., 0.9. `fused` is searched in two stages: its star thresholds start from the
tuned `star` ones while fg/boundary are searched, then all four are refined together.

Expensive steps run once per image and setting that needs them: star NMS once per
`nms_thresh` (at the lowest `prob_thresh` asked; higher ones only filter its result, see
`postprocess.star`), flow following and flow errors once per `prob_thresh` (every
`flow_thresh` reuses them).
"""

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from itertools import product

import numpy as np

from cellvit_cli.metrics import MatchCounts, label_overlap, match_counts, pool, scores
from cellvit_cli.postprocess import DEFAULT_THRESHOLDS, check_maps
from cellvit_cli.postprocess.boundary import decode_boundary
from cellvit_cli.postprocess.flow import flow_errors, follow_flows, remove_bad_flows
from cellvit_cli.postprocess.fused import fuse
from cellvit_cli.postprocess.star import polygons_to_labels, star_nms

IOU_THRESHS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))  # 0.5 .. 0.9
COARSE_GRIDS = {
    "star": {"prob_thresh": (0.3, 0.4, 0.5, 0.6, 0.7), "nms_thresh": (0.2, 0.3, 0.4, 0.5)},
    "flow": {"prob_thresh": (0.3, 0.4, 0.5, 0.6, 0.7), "flow_thresh": (0.0, 0.2, 0.4, 0.6, 0.8)},
    "boundary": {"fg_thresh": (0.3, 0.4, 0.5, 0.6, 0.7),
                 "boundary_thresh": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)},
}
FINE_STEPS = {"prob_thresh": 0.05, "nms_thresh": 0.05, "flow_thresh": 0.1,
              "fg_thresh": 0.05, "boundary_thresh": 0.05}
BOUNDS = (0.0, 0.99)  # every threshold stays in [0, 0.99]; flow_thresh 0 means no check

Setting = tuple[tuple[str, float], ...]   # a hashable {threshold: value}
Decoder = Callable[[dict], np.ndarray]


# ---- decoders with per-image caches --------------------------------------------------------

def _star_decoder(maps: Mapping, settings: Sequence[dict]) -> Decoder:
    """Star decoding of one image; NMS runs once per nms_thresh at the lowest prob_thresh."""
    prob, dist = maps["star"][0], maps["star"][1:]
    lowest = min(s["prob_thresh"] for s in settings)

    @cache
    def polygons(nms_thresh):
        return star_nms(prob, dist, lowest, nms_thresh)

    @cache
    def rendered(prob_thresh, nms_thresh):
        return polygons_to_labels(polygons(nms_thresh).above(prob_thresh), prob.shape)

    return lambda th: rendered(th["prob_thresh"], th["nms_thresh"])


def _flow_decoder(maps: Mapping, settings: Sequence[dict]) -> Decoder:
    """Flow decoding of one image; flows followed once per prob_thresh."""
    prob, flows = maps["flow"][0], maps["flow"][1:]

    @cache
    def followed(prob_thresh):
        masks = follow_flows(prob, flows, prob_thresh)
        return masks, flow_errors(masks, flows)

    return lambda th: remove_bad_flows(*followed(th["prob_thresh"]), th["flow_thresh"])


def _boundary_decoder(maps: Mapping, settings: Sequence[dict]) -> Decoder:
    fg, boundary = maps["boundary"]
    return lambda th: decode_boundary(fg, boundary, th["fg_thresh"], th["boundary_thresh"])


def _fused_decoder(maps: Mapping, settings: Sequence[dict]) -> Decoder:
    """Fused decoding of one image, reusing the star decoder's caches."""
    star = _star_decoder(maps, settings)
    fg, boundary = maps["boundary"]
    return lambda th: fuse(star(th), fg, boundary, th["fg_thresh"], th["boundary_thresh"])


DECODERS = {"star": _star_decoder, "flow": _flow_decoder, "boundary": _boundary_decoder,
            "fused": _fused_decoder}


# ---- scoring -------------------------------------------------------------------------------

def evaluate(mode: str, settings: Sequence[dict], maps: Sequence[Mapping],
             labels: Sequence[np.ndarray]) -> list[list[MatchCounts]]:
    """Pooled MatchCounts at IOU_THRESHS of each setting, images decoded one at a time."""
    totals = [None] * len(settings)
    for image_maps, true_labels in zip(maps, labels):
        decoder = DECODERS[mode](image_maps, settings)
        for k, th in enumerate(settings):
            counts = match_counts(label_overlap(np.asarray(true_labels), decoder(th)), IOU_THRESHS)
            totals[k] = counts if totals[k] is None else [pool(p) for p in zip(totals[k], counts)]
    return totals


def summarize(counts: Sequence[MatchCounts]) -> dict[str, float]:
    """Scores of one setting: ap50, ap75, ap90, ap_50_90 (mean over IOU_THRESHS), n_true."""
    aps = {c.iou_thresh: scores(c)["ap"] for c in counts}
    return {"ap50": aps[0.5], "ap75": aps[0.75], "ap90": aps[0.9],
            "ap_50_90": float(np.mean(list(aps.values()))), "n_true": counts[0].n_true}


def rank_key(summary: Mapping[str, float]) -> tuple[float, float]:
    """What the search maximises: AP@0.5 to 3 decimals, then mean AP over 0.5..0.9."""
    return round(summary["ap50"], 3), summary["ap_50_90"]


# ---- grid search ---------------------------------------------------------------------------

def grid_settings(grid: Mapping[str, Sequence[float]], fixed: Mapping[str, float] | None = None
                  ) -> list[Setting]:
    """Every combination of `grid`'s values, with `fixed` thresholds added to each."""
    names = list(grid)
    return [tuple(sorted({**(fixed or {}), **dict(zip(names, values))}.items()))
            for values in product(*(grid[n] for n in names))]


def fine_grid(best: Mapping[str, float], names: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """best +- one FINE_STEPS step for each of `names`, kept within BOUNDS."""
    def around(name):
        values = {round(min(max(best[name] + k * FINE_STEPS[name], BOUNDS[0]), BOUNDS[1]), 3)
                  for k in (-1, 0, 1)}
        return tuple(sorted(values))

    return {name: around(name) for name in names}


def search(mode: str, candidates: Sequence[Setting], maps, labels,
           scored: dict[Setting, dict]) -> Setting:
    """Score the `candidates` not yet in `scored` (updated in place); return the best of all."""
    new = [s for s in dict.fromkeys(candidates) if s not in scored]
    if new:
        for setting, counts in zip(new, evaluate(mode, [dict(s) for s in new], maps, labels)):
            scored[setting] = summarize(counts)
    return max(scored, key=lambda s: rank_key(scored[s]))


def tune_mode(mode: str, maps, labels, start: Mapping[str, float] | None = None,
              grid: Mapping[str, Sequence[float]] | None = None) -> tuple[dict, dict]:
    """Coarse then fine search of one mode. Returns (thresholds, scores of the best).

    For `fused`, `start` gives its star thresholds (default: DEFAULT_THRESHOLDS["star"])
    and `grid` its fg/boundary grid.
    """
    scored: dict[Setting, dict] = {}

    def best_of(grid_, fixed=None):
        return dict(search(mode, grid_settings(grid_, fixed), maps, labels, scored))

    if mode == "fused":
        coarse = grid or COARSE_GRIDS["boundary"]
        star = start or DEFAULT_THRESHOLDS["star"]
        best = best_of(coarse, {name: star[name] for name in DEFAULT_THRESHOLDS["star"]})
        best = best_of(fine_grid(best, list(coarse)), best)
        best = best_of(fine_grid(best, list(best)), best)
    else:
        coarse = grid or COARSE_GRIDS[mode]
        best = best_of(coarse)
        best = best_of(fine_grid(best, list(coarse)), best)
    return best, scored[tuple(sorted(best.items()))]


def tune_thresholds(maps: Sequence[Mapping[str, np.ndarray]], labels: Sequence[np.ndarray],
                    modes: Sequence[str], grids: Mapping[str, Mapping] | None = None) -> dict:
    """Thresholds of each mode tuned on validation maps, in the thresholds.json format.

    maps: per image {head: float32 (C, Y, X)}; labels: per image (Y, X) int ground truth;
    modes: the modes to tune (their heads must be in every image's maps); grids: optional
    coarse grids per mode replacing COARSE_GRIDS (for `fused`: its fg/boundary grid).
    Returns {mode: {threshold: value}, "scores": {mode: {"ap50", "ap75", "ap90",
    "ap_50_90", "n_true"}}, "default_mode": the mode of highest rank_key}.
    """
    if len(maps) != len(labels) or len(labels) == 0:
        raise ValueError(f"need equally many maps and labels, got {len(maps)} and {len(labels)}")
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise ValueError("no modes to tune")
    maps = [_checked(image_maps, modes) for image_maps in maps]
    grids = grids or {}
    result, all_scores = {}, {}
    for mode in sorted(modes, key=lambda m: m == "fused"):  # fused starts from the tuned star
        start = result.get("star") if mode == "fused" else None
        result[mode], all_scores[mode] = tune_mode(mode, maps, labels, start, grids.get(mode))
    best_mode = max(modes, key=lambda m: rank_key(all_scores[m]))
    return {**{m: result[m] for m in modes}, "scores": all_scores, "default_mode": best_mode}


def _checked(maps: Mapping[str, np.ndarray], modes: Sequence[str]) -> dict[str, np.ndarray]:
    """The maps every mode of `modes` needs, checked (see `postprocess.check_maps`)."""
    checked = {}
    for mode in modes:
        checked.update(check_maps(maps, mode))
    return checked
