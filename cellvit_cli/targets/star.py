"""StarDist targets: object probability and ray distances."""

import numpy as np
from stardist import star_dist
from stardist.utils import edt_prob


def star_targets(labels: np.ndarray, n_rays: int = 32) -> np.ndarray:
    """Star-convex targets of a label image.

    labels: (Y, X) int, 0 = background, one connected piece per object (see
    `targets.clean_labels`). Returns float32 (1 + n_rays, Y, X): the object probability
    (each object's distance transform normalised to 1 at its centre, stardist's `edt_prob`)
    followed by the `n_rays` ray lengths in pixels from `stardist.star_dist`.
    """
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    prob = edt_prob(labels).astype(np.float32)
    dist = star_dist(labels, n_rays=n_rays, mode="cpp")  # (Y, X, n_rays)
    return np.concatenate([prob[None], np.moveaxis(dist, -1, 0)], axis=0).astype(np.float32)
