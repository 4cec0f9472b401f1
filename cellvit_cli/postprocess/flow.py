"""Cellpose decoding: follow the flows to their sinks, then drop masks whose flows disagree.

The steps are cellpose's own (`cellpose.dynamics.follow_flows`, `get_masks_torch`,
`cellpose.metrics.flow_error`, `cellpose.utils.fill_holes_and_remove_small_masks`), in
the order of `cellpose.dynamics.compute_masks`, which stays the test oracle. They are
split so that `cached_flow_decoder` (threshold tuning) follows the flows once per
`prob_thresh` and tries every `flow_thresh` on the same masks.

Units: our flows are unit vectors, cellpose's network outputs 5x that (compute_masks divides
by 5 before following, flow_error compares against dP / 5); the steps below take unit flows
directly. Our prob is a probability; cellpose thresholds a logit, and `logit(p) > t` is
`p > sigmoid(t)`, so cellpose's default cellprob_threshold 0 is prob_thresh 0.5.
"""

import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import cache

import numpy as np

from cellvit_cli.postprocess.checks import MIN_SIZE, as_float_map, check_same_shape, relabel

N_ITER = 200              # Euler steps of the flow following (cellpose's default)
MAX_SIZE_FRACTION = 0.4   # masks above this fraction of the image are dropped (cellpose)
CELLPOSE_FLOW_SCALE = 5.0


def follow_flows(prob: np.ndarray, flows: np.ndarray, prob_thresh: float,
                 n_iter: int = N_ITER) -> np.ndarray:
    """Masks from the sinks of the flows, before any quality check.

    prob: (Y, X) float32; flows: (2, Y, X) float32 unit (dy, dx). Pixels with
    prob > prob_thresh move along the flows for `n_iter` steps; pixels ending near the same
    sink form one mask. Returns int32 (Y, X), 1..N.
    """
    import torch
    from cellpose import dynamics  # slow import (~6 s): only when decoding flows

    mask = prob > prob_thresh
    if not mask.any():
        return np.zeros(prob.shape, np.int32)
    inds = np.nonzero(mask)
    ends = dynamics.follow_flows(flows * mask, inds, niter=n_iter, interp=True)
    ends = torch.from_numpy(np.asarray(ends)).int()
    with warnings.catch_warnings():  # torch's notice on unchecked sparse tensors
        warnings.simplefilter("ignore", UserWarning)
        labels = dynamics.get_masks_torch(ends, inds, prob.shape,
                                          max_size_fraction=MAX_SIZE_FRACTION)
    return labels.astype(np.int32)


def flow_errors(labels: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """(N,) float mean squared difference between `flows` and the flows of each mask.

    labels: (Y, X) int 1..N without gaps; flows: (2, Y, X) float32 unit (dy, dx).
    """
    import torch
    from cellpose import metrics

    if labels.max() == 0:
        return np.zeros(0)
    return metrics.flow_error(labels, flows * CELLPOSE_FLOW_SCALE, torch.device("cpu"))[0]


def remove_bad_flows(labels: np.ndarray, errors: np.ndarray, flow_thresh: float | None,
                     min_size: int = MIN_SIZE) -> np.ndarray:
    """Drop masks with flow error above `flow_thresh` (None or 0: keep all), fill holes,
    drop masks under `min_size` pixels. labels: (Y, X) int 1..N; errors: (N,).
    Returns int32 (Y, X), 1..M.
    """
    from cellpose.utils import fill_holes_and_remove_small_masks

    labels = np.asarray(labels, np.int32)
    if flow_thresh:
        bad = 1 + np.flatnonzero(errors > flow_thresh)
        labels = np.where(np.isin(labels, bad), 0, labels)
        labels = relabel(labels)
    if labels.max() == 0:
        return labels
    labels = fill_holes_and_remove_small_masks(labels, min_size=min_size)
    return np.asarray(labels, np.int32)


def decode_flow(prob: np.ndarray, flows: np.ndarray, prob_thresh: float,
                flow_thresh: float | None, min_size: int = MIN_SIZE) -> np.ndarray:
    """Instance labels from a flow head's maps.

    prob: (Y, X) float cell probability in [0, 1]; flows: (2, Y, X) float unit (dy, dx)
    towards each cell's centre. flow_thresh: largest flow error a mask may have (None or 0
    skips the check, which recomputes flows from the masks and is the slowest step).
    Returns int32 (Y, X), 0 = background, 1..N.
    """
    prob = as_float_map(prob, 2, "prob")
    flows = as_float_map(flows, 3, "flows")
    check_same_shape(prob.shape, flows=flows)
    if flows.shape[0] != 2:
        raise ValueError(f"flows must be (2, Y, X) (dy, dx), got shape {flows.shape}")
    labels = follow_flows(prob, flows, prob_thresh)
    errors = flow_errors(labels, flows) if flow_thresh else np.zeros(labels.max())
    return remove_bad_flows(labels, errors, flow_thresh, min_size)


def decode_flow_maps(maps: Mapping[str, np.ndarray], prob_thresh: float,
                     flow_thresh: float | None) -> np.ndarray:
    """`decode_flow` of maps["flow"] = float32 (3, Y, X) [prob, dy, dx]."""
    return decode_flow(maps["flow"][0], maps["flow"][1:], prob_thresh, flow_thresh)


def cached_flow_decoder(maps: Mapping[str, np.ndarray], settings: Sequence[Mapping[str, float]]
                        ) -> Callable[[Mapping[str, float]], np.ndarray]:
    """`decode_flow_maps` of one image for many settings ({prob_thresh, flow_thresh}): the
    flows are followed, and their errors computed, once per prob_thresh (on first use, so
    `settings` is not needed ahead)."""
    prob, flows = maps["flow"][0], maps["flow"][1:]

    @cache
    def followed(prob_thresh):
        masks = follow_flows(prob, flows, prob_thresh)
        return masks, flow_errors(masks, flows)

    return lambda th: remove_bad_flows(*followed(th["prob_thresh"]), th["flow_thresh"])
