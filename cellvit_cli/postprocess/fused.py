"""Fused decoding: objects from the star head, borders from the boundary head.

StarDist's NMS decides which objects exist and splits touching ones well, but its polygons
cannot follow a non-star-convex outline. Here each kept polygon, restricted to confident
interior pixels (fg > fg_thresh and boundary < boundary_thresh), is the seed of one object;
the seeds grow over the boundary probability within fg > fg_thresh (seeded watershed), so
the borders are the boundary head's. Foreground without any polygon stays background:
the star head alone decides what is an object. A polygon with no confident interior pixel
keeps its foreground pixels as seed.
"""

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from skimage.segmentation import watershed

from cellvit_cli.postprocess.checks import MIN_SIZE, as_float_map, check_same_shape, relabel
from cellvit_cli.postprocess.star import cached_star_decoder, decode_star


def fuse(polygon_labels: np.ndarray, fg: np.ndarray, boundary: np.ndarray, fg_thresh: float,
         boundary_thresh: float, min_size: int = MIN_SIZE) -> np.ndarray:
    """Grow star polygons into the boundary head's foreground.

    polygon_labels: (Y, X) int rendered polygons; fg, boundary: (Y, X) float32.
    Returns int32 (Y, X), 1..N.
    """
    mask = fg > fg_thresh
    interior = mask & (boundary < boundary_thresh)
    seeds = np.where(interior, polygon_labels, 0)
    lost = np.setdiff1d(np.unique(polygon_labels[mask]), np.unique(seeds))
    if lost.size:
        seeds = np.where(mask & np.isin(polygon_labels, lost), polygon_labels, seeds)
    return relabel(watershed(boundary, seeds, mask=mask), min_size)


def decode_fused(prob: np.ndarray, dist: np.ndarray, fg: np.ndarray, boundary: np.ndarray,
                 prob_thresh: float, nms_thresh: float, fg_thresh: float,
                 boundary_thresh: float, min_size: int = MIN_SIZE) -> np.ndarray:
    """Instance labels from the star and boundary heads' maps.

    prob: (Y, X) star object probability; dist: (n_rays, Y, X) ray lengths in pixels;
    fg, boundary: (Y, X) boundary head's probabilities. Returns int32 (Y, X), 1..N.
    """
    fg = as_float_map(fg, 2, "fg")
    boundary = as_float_map(boundary, 2, "boundary")
    check_same_shape(fg.shape, boundary=boundary, prob=np.asarray(prob))
    polygon_labels = decode_star(prob, dist, prob_thresh, nms_thresh)
    return fuse(polygon_labels, fg, boundary, fg_thresh, boundary_thresh, min_size)


def decode_fused_maps(maps: Mapping[str, np.ndarray], prob_thresh: float, nms_thresh: float,
                      fg_thresh: float, boundary_thresh: float) -> np.ndarray:
    """`decode_fused` of maps["star"] (1 + n_rays, Y, X) and maps["boundary"] (2, Y, X)."""
    star, boundary = maps["star"], maps["boundary"]
    return decode_fused(star[0], star[1:], boundary[0], boundary[1], prob_thresh, nms_thresh,
                        fg_thresh, boundary_thresh)


def cached_fused_decoder(maps: Mapping[str, np.ndarray], settings: Sequence[Mapping[str, float]]
                         ) -> Callable[[Mapping[str, float]], np.ndarray]:
    """`decode_fused_maps` of one image for each of `settings`, its polygons from
    `cached_star_decoder` (NMS once per nms_thresh)."""
    star = cached_star_decoder(maps, settings)
    fg, boundary = maps["boundary"]
    return lambda th: fuse(star(th), fg, boundary, th["fg_thresh"], th["boundary_thresh"])
