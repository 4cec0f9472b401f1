"""StarDist decoding: candidate polygons, non-maximum suppression, rendering to labels.

stardist's own `non_maximum_suppression_inds` (greedy, in descending probability; ties
in raster order) and `polygons_to_label` do the work. Candidates are the most probable
pixel of each `block` x `block` tile whose probability exceeds `prob_thresh` and that is a
local maximum, at most the MAX_CANDIDATE_DENSITY most probable (stardist's own decoding
takes every pixel; the APs are the same on every set measured, docs/postprocessing.md).
Greedy NMS decides each candidate only from more probable ones, and neither the local
maxima nor the cap depend on `prob_thresh`, so the objects kept at a higher `prob_thresh`
are exactly those kept at a lower one with probability above it (`cached_star_decoder`,
used by threshold tuning, relies on this).

stardist's NMS is OpenMP-parallel; on a busy machine (the network running beside decoding)
its threads spin-wait for each other and one decoding took 10x longer than on one thread
(docs/postprocessing.md). So the NMS runs on one thread of stardist's own bundled libgomp,
which touches no other library's threads; parallelism belongs across images.
"""

import ctypes
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import stardist
from scipy import ndimage as ndi
from stardist import polygons_to_label
from stardist.nms import non_maximum_suppression_inds

from cellvit_cli.postprocess.checks import as_float_map, check_same_shape, relabel
from cellvit_cli.registry import MIN_RAYS

CANDIDATE_BLOCK = 2   # 2x2 block maxima: as accurate, faster (docs/postprocessing.md)
BORDER = 2            # stardist's `b`: no candidates this close to the image border
LOCAL_MAX_RADIUS = 1  # candidates must be maxima of their 3x3 neighbourhood
MAX_CANDIDATE_DENSITY = 1 / 32  # at most one candidate per 32 px: binds only on noise-like
                                # maps (an untrained model's), where NMS would take minutes


@cache
def _stardist_openmp():
    """stardist's bundled libgomp (a wheel's stardist.libs/), or None if it has none."""
    libs = sorted((Path(stardist.__file__).parent.parent / "stardist.libs").glob("libgomp*.so*"))
    return ctypes.CDLL(str(libs[0])) if libs else None


@contextmanager
def _one_openmp_thread():
    """Run stardist's OpenMP code on one thread in this block (calling thread only)."""
    gomp = _stardist_openmp()
    if gomp is None:
        yield
        return
    before = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(before)


@dataclass(frozen=True)
class Polygons:
    """Star-convex polygons kept by NMS, most probable first.

    points: (N, 2) int32 centres (y, x); prob: (N,) float32; dist: (N, n_rays) float32.
    """

    points: np.ndarray
    prob: np.ndarray
    dist: np.ndarray

    def above(self, prob_thresh: float) -> "Polygons":
        """The polygons whose probability exceeds `prob_thresh`."""
        keep = self.prob > prob_thresh
        return Polygons(self.points[keep], self.prob[keep], self.dist[keep])


def candidate_points(prob: np.ndarray, prob_thresh: float, block: int = CANDIDATE_BLOCK,
                     border: int = BORDER, radius: int = LOCAL_MAX_RADIUS) -> np.ndarray:
    """(N, 2) int32 (y, x) of the most probable pixel of each block, where above threshold
    and a local maximum within `radius` px (radius 0: every block maximum).

    prob: (Y, X) float32. Pixels closer than `border` to the image edge are never candidates.
    """
    ys, xs = prob.shape
    padded = np.full((-(-ys // block) * block, -(-xs // block) * block), -np.inf, np.float32)
    padded[border:ys - border, border:xs - border] = prob[border:ys - border, border:xs - border]
    tiles = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block)
    tiles = tiles.transpose(0, 2, 1, 3).reshape(*tiles.shape[::2], block * block)
    best = tiles.argmax(axis=-1)
    by, bx = np.nonzero(np.take_along_axis(tiles, best[..., None], -1)[..., 0] > prob_thresh)
    k = best[by, bx]
    points = np.stack([by * block + k // block, bx * block + k % block], axis=1).astype(np.int32)
    return points[is_local_max(padded, points, radius)]


def is_local_max(prob: np.ndarray, points: np.ndarray, radius: int) -> np.ndarray:
    """(N,) bool: whether each (y, x) point is a maximum of `prob` within `radius` pixels
    (pixels that may not be candidates are -inf in `prob`, so they never win).

    An object's most probable pixel is a local maximum, and greedy NMS keeps it first, so
    the same objects are found on well-formed maps (not guaranteed on any map); blurry maps
    (an early model's) no longer give hundreds of thousands of overlapping candidates,
    which made NMS take minutes per image.
    """
    if radius == 0 or len(points) == 0:
        return np.ones(len(points), bool)
    peak = ndi.maximum_filter(prob, size=2 * radius + 1, mode="constant", cval=-np.inf)
    return prob[points[:, 0], points[:, 1]] >= peak[points[:, 0], points[:, 1]]


def star_nms(prob: np.ndarray, dist: np.ndarray, prob_thresh: float, nms_thresh: float,
             block: int = CANDIDATE_BLOCK) -> Polygons:
    """Polygons kept by stardist's greedy NMS.

    prob: (Y, X) float32 object probability; dist: (n_rays, Y, X) float32 ray lengths in
    pixels; nms_thresh: the largest overlap (intersection over the smaller polygon's area)
    two kept polygons may have.
    """
    points = candidate_points(prob, prob_thresh, block)
    n_rays = dist.shape[0]
    if len(points) == 0:
        return Polygons(points.reshape(0, 2), np.zeros(0, np.float32),
                        np.zeros((0, n_rays), np.float32))
    scores = prob[points[:, 0], points[:, 1]]
    order = np.argsort(-scores, kind="stable")[:max(1, int(prob.size * MAX_CANDIDATE_DENSITY))]
    points, scores = points[order], scores[order]
    rays = np.ascontiguousarray(dist[:, points[:, 0], points[:, 1]].T)
    with _one_openmp_thread():
        kept = non_maximum_suppression_inds(rays, points, scores, thresh=nms_thresh, verbose=False)
    return Polygons(points[kept], scores[kept], rays[kept])


def polygons_to_labels(polygons: Polygons, shape: tuple[int, int]) -> np.ndarray:
    """Render polygons to an int32 (Y, X) label image, 1..N; more probable ones drawn on top."""
    if len(polygons.points) == 0:
        return np.zeros(shape, np.int32)
    labels = polygons_to_label(polygons.dist, polygons.points, shape, prob=polygons.prob)
    return relabel(labels)


def decode_star(prob: np.ndarray, dist: np.ndarray, prob_thresh: float, nms_thresh: float,
                block: int = CANDIDATE_BLOCK) -> np.ndarray:
    """Instance labels from a star head's maps.

    prob: (Y, X) float object probability in [0, 1]; dist: (n_rays, Y, X) float ray lengths
    in pixels, ray k at angle 2*pi*k/n_rays. Returns int32 (Y, X), 0 = background, 1..N.
    """
    prob = as_float_map(prob, 2, "prob")
    dist = as_float_map(dist, 3, "dist")
    check_same_shape(prob.shape, dist=dist)
    if dist.shape[0] < MIN_RAYS:
        raise ValueError(f"dist needs at least {MIN_RAYS} rays, got {dist.shape[0]}")
    return polygons_to_labels(star_nms(prob, dist, prob_thresh, nms_thresh, block), prob.shape)


def decode_star_maps(maps: Mapping[str, np.ndarray], prob_thresh: float,
                     nms_thresh: float) -> np.ndarray:
    """`decode_star` of maps["star"] = float32 (1 + n_rays, Y, X) [prob, dist x n_rays]."""
    return decode_star(maps["star"][0], maps["star"][1:], prob_thresh, nms_thresh)


def cached_star_decoder(maps: Mapping[str, np.ndarray], settings: Sequence[Mapping[str, float]]
                        ) -> Callable[[Mapping[str, float]], np.ndarray]:
    """`decode_star_maps` of one image for each of `settings` ({prob_thresh, nms_thresh}):
    NMS runs once per nms_thresh, at the lowest prob_thresh of `settings`; a higher one
    only filters its polygons (see the module docstring)."""
    prob, dist = maps["star"][0], maps["star"][1:]
    lowest = min(s["prob_thresh"] for s in settings)

    @cache
    def polygons(nms_thresh):
        return star_nms(prob, dist, lowest, nms_thresh)

    @cache
    def rendered(prob_thresh, nms_thresh):
        return polygons_to_labels(polygons(nms_thresh).above(prob_thresh), prob.shape)

    return lambda th: rendered(th["prob_thresh"], th["nms_thresh"])
