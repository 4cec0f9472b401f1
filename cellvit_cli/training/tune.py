"""Threshold tuning: per decoding mode, a grid search maximising pooled DSB AP@0.5.

Each mode's thresholds are searched on a coarse grid (each threshold's `coarse` values in
`cellvit_cli.registry`), then on a fine grid of the best value +- one `fine_step` per
threshold (settings already scored are not decoded again). The criterion is pooled AP@0.5
(`cellvit_cli.metrics`, TP / (TP+FP+FN) over all validation objects) rounded to 3 decimals;
ties go to the higher AP averaged over IoU 0.5, 0.55, .., 0.9. A mode `tuned_after` another
(`fused` after `star`) is searched in two stages: the other mode's thresholds start from
their tuned values while its own are searched, then all are refined together.

Expensive steps run once per image and setting that needs them (`postprocess.cached_decoder`):
star NMS once per `nms_thresh`, flow following and flow errors once per `prob_thresh`.
"""

from collections.abc import Mapping, Sequence
from itertools import product

import numpy as np

from cellvit_cli.metrics import MatchCounts, label_overlap, match_counts, pool, scores
from cellvit_cli.postprocess import cached_decoder, check_maps
from cellvit_cli.registry import mode_spec

IOU_THRESHS = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))  # 0.5 .. 0.9
BOUNDS = (0.0, 0.99)  # every threshold stays in [0, 0.99]; flow_thresh 0 means no check

Setting = tuple[tuple[str, float], ...]   # a hashable {threshold: value}


# ---- scoring -------------------------------------------------------------------------------

def evaluate(mode: str, settings: Sequence[dict], maps: Sequence[Mapping],
             labels: Sequence[np.ndarray]) -> list[list[MatchCounts]]:
    """Pooled MatchCounts at IOU_THRESHS of each setting, images decoded one at a time."""
    totals = [None] * len(settings)
    for image_maps, true_labels in zip(maps, labels):
        decoder = cached_decoder(image_maps, mode, settings)
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


def fine_grid(best: Mapping[str, float], steps: Mapping[str, float]
              ) -> dict[str, tuple[float, ...]]:
    """best +- one step for each threshold of `steps` ({name: step}), kept within BOUNDS."""
    def around(name):
        values = {round(min(max(best[name] + k * steps[name], BOUNDS[0]), BOUNDS[1]), 3)
                  for k in (-1, 0, 1)}
        return tuple(sorted(values))

    return {name: around(name) for name in steps}


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

    grid replaces the mode's coarse grid. For a mode `tuned_after` another, `start` gives
    that mode's thresholds (default: its defaults), held fixed in the coarse search.
    """
    spec, scored = mode_spec(mode), {}

    def best_of(grid_, fixed=None):
        return dict(search(mode, grid_settings(grid_, fixed), maps, labels, scored))

    def steps(names):
        return {name: spec.fine_steps[name] for name in names}

    coarse = grid or spec.coarse_grid
    fixed = None
    if spec.tuned_after:
        inherited = mode_spec(spec.tuned_after)
        fixed = {name: (start or inherited.defaults)[name] for name in inherited.thresholds}
    best = best_of(coarse, fixed)
    best = best_of(fine_grid(best, steps(coarse)), best)
    if fixed:
        best = best_of(fine_grid(best, steps(best)), best)
    return best, scored[tuple(sorted(best.items()))]


def tune_thresholds(maps: Sequence[Mapping[str, np.ndarray]], labels: Sequence[np.ndarray],
                    modes: Sequence[str], grids: Mapping[str, Mapping] | None = None) -> dict:
    """Thresholds of each mode tuned on validation maps, in the thresholds.json format.

    maps: per image {head: float32 (C, Y, X)}; labels: per image (Y, X) int ground truth;
    modes: the modes to tune (their heads must be in every image's maps); grids: optional
    coarse grids per mode replacing the registry's (for `fused`: its fg/boundary grid).
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
    for mode in sorted(modes, key=lambda m: mode_spec(m).tuned_after is not None):
        after = mode_spec(mode).tuned_after  # fused starts from the tuned star
        start = result.get(after) if after else None
        result[mode], all_scores[mode] = tune_mode(mode, maps, labels, start, grids.get(mode))
    best_mode = max(modes, key=lambda m: rank_key(all_scores[m]))
    return {**{m: result[m] for m in modes}, "scores": all_scores, "default_mode": best_mode}


def _checked(maps: Mapping[str, np.ndarray], modes: Sequence[str]) -> dict[str, np.ndarray]:
    """The maps every mode of `modes` needs, checked (see `postprocess.check_maps`)."""
    checked = {}
    for mode in modes:
        checked.update(check_maps(maps, mode))
    return checked
