"""Foreground and inner-boundary targets for seeded watershed."""

import numpy as np
from skimage.segmentation import find_boundaries


def boundary_targets(labels: np.ndarray) -> np.ndarray:
    """Boundary targets of a label image.

    labels: (Y, X) int. Returns float32 (2, Y, X): the foreground mask and each object's
    inner boundary (its pixels that touch another label or the background), so that
    foreground minus boundary leaves one seed per object, even for touching objects.
    """
    out = np.zeros((2, *labels.shape), np.float32)
    out[0] = labels > 0
    out[1] = find_boundaries(labels, connectivity=1, mode="inner")
    return out
