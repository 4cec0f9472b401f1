"""Overlapping tiles over an image, and the taper-weighted blend that stitches their maps.

Tiles are planned in the coordinates of the image padded (at the bottom and right) to at
least one tile; every tile of an image has the same shape, a multiple of the model's
`size_multiple`. Stitching blends the dense maps of overlapping tiles with a cosine ramp
over the overlap (no ramp on sides that lie on the image border), so decoding runs once
on maps of the whole image and a cell on a tile border is never cut or doubled.
"""

import math
from collections.abc import Iterable

import numpy as np

Slices = tuple[slice, slice]
WEIGHT_FLOOR = 1e-3  # every pixel of a tile keeps at least this weight: no division by 0


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_shape(shape: tuple[int, int], tile_size: int, multiple: int = 1,
               overlap: int = 0) -> tuple[int, int]:
    """Shape of every tile of an image of `shape` (Y, X), at most `tile_size`.

    Along each axis: the fewest tiles of `tile_size` that cover the axis with `overlap`,
    then shrunk (to a multiple of `multiple`) as far as they still cover it, so little is
    computed twice: a 1024 px axis takes 3 tiles of 384, not 3 of 512, at overlap 64. A
    small image's tile is its size rounded up to `multiple`.
    """
    if tile_size % multiple:
        raise ValueError(f"tile size {tile_size} is not a multiple of {multiple}")
    return tuple(_axis_tile(n, tile_size, multiple, min(overlap, tile_size - 1)) for n in shape)


def _axis_tile(length: int, tile_size: int, multiple: int, overlap: int) -> int:
    if length <= tile_size:
        return round_up(length, multiple)
    count = math.ceil((length - overlap) / (tile_size - overlap))
    return min(tile_size, round_up(math.ceil((length + (count - 1) * overlap) / count), multiple))


def _axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile starts along one axis, neighbours overlapping by >= `overlap`."""
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / (tile - overlap)) + 1
    return sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})


def plan_tiles(shape: tuple[int, int], tile_size: int, overlap: int,
               multiple: int = 1) -> list[Slices]:
    """Tiles (y slice, x slice) covering every pixel of an image of `shape` (Y, X).

    All tiles have `tile_shape(shape, tile_size, multiple, overlap)`; neighbours overlap by at least
    `overlap` pixels; the last tile of a row or column is shifted to end on the border. A
    tile of a small image reaches past the image: pad the image with `pad_to_tiles`.
    """
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap {overlap} must be >= 0 and < tile size {tile_size}")
    if min(shape) < 1:
        raise ValueError(f"empty image of shape {tuple(shape)}")
    ty, tx = tile_shape(shape, tile_size, multiple, overlap)
    ov_y, ov_x = min(overlap, ty - 1), min(overlap, tx - 1)
    return [(slice(y, y + ty), slice(x, x + tx))
            for y in _axis_starts(shape[0], ty, ov_y) for x in _axis_starts(shape[1], tx, ov_x)]


def pad_to_tiles(image: np.ndarray, tiles: list[Slices]) -> np.ndarray:
    """Pad (C, Y, X) `image` at the bottom and right (reflection) so every tile fits."""
    need_y = max(t[0].stop for t in tiles) - image.shape[-2]
    need_x = max(t[1].stop for t in tiles) - image.shape[-1]
    if need_y <= 0 and need_x <= 0:
        return image
    pad = [(0, 0)] * (image.ndim - 2) + [(0, max(need_y, 0)), (0, max(need_x, 0))]
    mode = "reflect" if min(image.shape[-2:]) > 1 else "edge"
    return np.pad(image, pad, mode=mode)


def _ramp(length: int, ramp: int, taper_start: bool, taper_stop: bool) -> np.ndarray:
    """1-D window: ones, with a cosine rise over `ramp` px on each tapered side."""
    window = np.ones(length, dtype=np.float32)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        if taper_start:
            window[:ramp] = rise
        if taper_stop:
            window[length - ramp:] = rise[::-1]
    return np.maximum(window, WEIGHT_FLOOR)


class Stitcher:
    """Accumulates the weighted dense maps of tiles into the maps of one image.

    shape: (Y, X) of the image; channels: {head: C_head}. `add` each tile's maps
    {head: (C, ty, tx)} with its slices from `plan_tiles`; `result` divides the weighted
    sums by the weights and returns {head: float32 (C, Y, X)}.
    """

    def __init__(self, shape: tuple[int, int], channels: dict[str, int], overlap: int):
        self.shape = tuple(shape)
        self.overlap = overlap
        self.sums = {head: np.zeros((c, *self.shape), np.float32) for head, c in channels.items()}
        self.weights = np.zeros(self.shape, np.float32)
        self._windows: dict[tuple, np.ndarray] = {}

    def _window(self, tile: Slices) -> np.ndarray:
        sides = tuple((s.start > 0, s.stop < n) for s, n in zip(tile, self.shape))
        wkey = (tile[0].stop - tile[0].start, tile[1].stop - tile[1].start, sides)
        if wkey not in self._windows:
            wy = _ramp(wkey[0], self.overlap, *sides[0])
            wx = _ramp(wkey[1], self.overlap, *sides[1])
            self._windows[wkey] = np.outer(wy, wx)
        return self._windows[wkey]

    def add(self, tile: Slices, maps: dict[str, np.ndarray]) -> None:
        window = self._window(tile)
        ys = slice(tile[0].start, min(tile[0].stop, self.shape[0]))
        xs = slice(tile[1].start, min(tile[1].stop, self.shape[1]))
        crop = (slice(0, ys.stop - ys.start), slice(0, xs.stop - xs.start))
        weight = window[crop]
        self.weights[ys, xs] += weight
        for head, total in self.sums.items():
            total[:, ys, xs] += maps[head][(slice(None), *crop)] * weight

    def result(self) -> dict[str, np.ndarray]:
        """The blended maps (computed in place: call once)."""
        if not self.weights.all():
            raise RuntimeError("some pixels are covered by no tile")
        for total in self.sums.values():
            total /= self.weights
        return self.sums


def stitch(tiles: Iterable[tuple[Slices, dict[str, np.ndarray]]], shape: tuple[int, int],
           overlap: int) -> dict[str, np.ndarray]:
    """Blend (slices, {head: (C, ty, tx)}) tiles into {head: float32 (C, Y, X)}."""
    stitcher = None
    for tile, maps in tiles:
        if stitcher is None:
            stitcher = Stitcher(shape, {h: m.shape[0] for h, m in maps.items()}, overlap)
        stitcher.add(tile, maps)
    if stitcher is None:
        raise ValueError("no tiles to stitch")
    return stitcher.result()
