"""Boundary decoding: seeds inside the cells, seeded watershed out to the cell borders.

Seeds are the connected pieces of foreground that is not boundary; each grows over the
boundary probability (`skimage.segmentation.watershed`) within the foreground, so touching
cells meet where the boundary is most probable. Seeds under `min_seed_size` pixels (noise
on blurry predicted maps) are dropped and their pixels flooded from a neighbour; a
foreground piece left without any seed (a cell too thin to have an interior) becomes one
object of its own.
"""

from collections.abc import Mapping

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from cellvit_cli.postprocess.checks import MIN_SIZE, as_float_map, check_same_shape, relabel

MIN_SEED_SIZE = 4    # pixels


def boundary_seeds(fg: np.ndarray, boundary: np.ndarray, fg_thresh: float, boundary_thresh: float,
                   min_seed_size: int = MIN_SEED_SIZE) -> np.ndarray:
    """Connected pieces (4-connectivity) of (fg > fg_thresh) & (boundary < boundary_thresh)
    with at least `min_seed_size` pixels. fg, boundary: (Y, X) float32. Returns int32 1..N.
    """
    seeds, _ = ndi.label((fg > fg_thresh) & (boundary < boundary_thresh))
    return relabel(seeds, min_seed_size)


def grow_seeds(seeds: np.ndarray, landscape: np.ndarray, mask: np.ndarray,
               min_size: int = MIN_SIZE) -> np.ndarray:
    """Seeded watershed of `landscape` within `mask`, plus unseeded pieces of `mask`.

    seeds: (Y, X) int, 0 = no seed; landscape: (Y, X) float, low inside objects;
    mask: (Y, X) bool. Objects under `min_size` pixels are dropped.
    Returns int32 (Y, X), 1..N.
    """
    labels = watershed(landscape, seeds, mask=mask)
    unseeded, _ = ndi.label(mask & (labels == 0))
    unseeded[unseeded > 0] += labels.max()
    return relabel(labels + unseeded, min_size)


def decode_boundary(fg: np.ndarray, boundary: np.ndarray, fg_thresh: float,
                    boundary_thresh: float, min_size: int = MIN_SIZE,
                    min_seed_size: int = MIN_SEED_SIZE) -> np.ndarray:
    """Instance labels from a boundary head's maps.

    fg: (Y, X) float foreground probability; boundary: (Y, X) float probability of a
    cell's inner boundary. Returns int32 (Y, X), 0 = background, 1..N.
    """
    fg = as_float_map(fg, 2, "fg")
    boundary = as_float_map(boundary, 2, "boundary")
    check_same_shape(fg.shape, boundary=boundary)
    seeds = boundary_seeds(fg, boundary, fg_thresh, boundary_thresh, min_seed_size)
    return grow_seeds(seeds, boundary, fg > fg_thresh, min_size)


def decode_boundary_maps(maps: Mapping[str, np.ndarray], fg_thresh: float,
                         boundary_thresh: float) -> np.ndarray:
    """`decode_boundary` of maps["boundary"] = float32 (2, Y, X) [fg, boundary]."""
    fg, boundary = maps["boundary"]
    return decode_boundary(fg, boundary, fg_thresh, boundary_thresh)
