"""Cellpose targets: cell probability and unit flows towards each cell's centre."""

import numpy as np
from skimage.segmentation import relabel_sequential


def flow_targets(labels: np.ndarray) -> np.ndarray:
    """Flow targets of a label image.

    labels: (Y, X) int. Returns float32 (3, Y, X): the binary cell mask, then (dy, dx), the
    unit flow of cellpose's heat diffusion (`cellpose.dynamics.masks_to_flows`), zero outside
    cells. Cellpose expects labels 1..N without gaps, so they are relabelled first.
    """
    from cellpose.dynamics import masks_to_flows  # slow import: only when flows are asked for

    labels = relabel_sequential(np.asarray(labels, dtype=np.int32))[0]
    out = np.zeros((3, *labels.shape), np.float32)
    out[0] = labels > 0
    if labels.max() > 0:
        out[1:] = masks_to_flows(labels)
    return out
