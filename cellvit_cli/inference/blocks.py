"""Block mode's geometry: segment an image of any size with memory bounded by the block size.

The image is cut into a grid of blocks; each block's *core* is the part of the image it
owns, its *outer* region adds a halo wider than the largest cell on every side (clipped at
the image border). Each outer region is predicted (tiled) and decoded on its own; a cell
is kept by the one block whose core holds its centroid, with all of its pixels (also those
in the halo). Where kept cells of neighbouring blocks claim the same pixel, the block
written first (raster order of blocks) keeps it. Kept cells get globally unique labels
(1, 2, ... in raster order of blocks) and are streamed as (256, 256) tiles into a tiled
BigTIFF as soon as no later block can reach their rows. A block's cells are final once it
is pasted (later blocks only fill pixels still free), so each block hands them on
(`on_block`) for exports that are built block by block.

Pure of files and models: `predict` and `decode` are given; reading a file and its model
input is `block_pipeline.segment_file_blocks`.
"""

import math
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from cellvit_cli.bigtiff import TILE, write_tiled
from cellvit_cli.inference.tiling import Slices
from cellvit_cli.io import InputError

HALO_DIAMETERS = 4  # halo width in median cell diameters: the largest cells are ~2 diameters
MIN_HALO = 32
LABEL_DTYPE = np.uint32


@dataclass(frozen=True)
class Block:
    """core: the pixels this block owns; outer: core plus halo, clipped to the image."""

    core: Slices
    outer: Slices

    def core_in_outer(self) -> Slices:
        """The core in the coordinates of the outer region."""
        return tuple(slice(c.start - o.start, c.stop - o.start)
                     for c, o in zip(self.core, self.outer))


def check_zoom(path, shape: tuple[int, int], zoom: float) -> None:
    """InputError naming `path` and the options to change when `zoom` shrinks an image of
    `shape` (Y, X) to nothing."""
    zoomed = [round(n * zoom) for n in shape]
    if min(zoomed) < 1:
        raise InputError(path, f"zoom {zoom:.3g} shrinks the image ({shape[0]} x {shape[1]} px) "
                               f"to {zoomed[0]} x {zoomed[1]} px: give a smaller --diameter or "
                               "a larger --scale")


def halo_for(median_diameter: float, scale: float = 1.0) -> int:
    """Halo width (image pixels) for cells of `median_diameter` px at the model's scale, when
    the image is zoomed by `scale` before prediction."""
    return max(MIN_HALO, math.ceil(HALO_DIAMETERS * median_diameter / scale))


def image_borders(outer: Slices, shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    """Which sides (top, bottom, left, right) of the region `outer` are the borders of an
    image of `shape`."""
    ys, xs = outer
    return ys.start == 0, ys.stop == shape[0], xs.start == 0, xs.stop == shape[1]


def plan_blocks(shape: tuple[int, int], block_size: int, halo: int) -> list[list[Block]]:
    """Rows of blocks whose cores tile an image of `shape` (Y, X) without overlap."""
    if block_size < 1 or halo < 0:
        raise ValueError(f"block size {block_size} must be >= 1 and halo {halo} >= 0")

    def cuts(n: int) -> list[tuple[int, int]]:
        count = max(1, math.ceil(n / block_size))
        edges = [round(i * n / count) for i in range(count + 1)]
        return list(zip(edges[:-1], edges[1:]))

    return [[Block((slice(y0, y1), slice(x0, x1)),
                   (slice(max(0, y0 - halo), min(shape[0], y1 + halo)),
                    slice(max(0, x0 - halo), min(shape[1], x1 + halo))))
             for x0, x1 in cuts(shape[1])] for y0, y1 in cuts(shape[0])]


def keep_owned(labels: np.ndarray, block: Block) -> np.ndarray:
    """The cells of `labels` (the block's outer region) whose centroid lies in its core,
    renumbered 1..n in order of their label; all other pixels 0. Returns uint32 (y, x)."""
    labels = np.asarray(labels)
    flat = labels.ravel()
    n = int(flat.max(initial=0))
    if n == 0:
        return np.zeros(labels.shape, LABEL_DTYPE)
    area = np.bincount(flat, minlength=n + 1)
    ys, xs = np.indices(labels.shape, sparse=True)
    cy = np.bincount(flat, np.broadcast_to(ys, labels.shape).ravel(), n + 1)
    cx = np.bincount(flat, np.broadcast_to(xs, labels.shape).ravel(), n + 1)
    present = area > 0
    present[0] = False
    cy = np.floor(np.divide(cy, area, where=present, out=np.zeros(n + 1)))
    cx = np.floor(np.divide(cx, area, where=present, out=np.zeros(n + 1)))
    core_y, core_x = block.core_in_outer()
    owned = (present & (cy >= core_y.start) & (cy < core_y.stop)
             & (cx >= core_x.start) & (cx < core_x.stop))
    lookup = np.zeros(n + 1, LABEL_DTYPE)
    lookup[owned] = np.arange(1, owned.sum() + 1, dtype=LABEL_DTYPE)
    return lookup[labels]


@dataclass(frozen=True)
class PackedCells:
    """A block's owned cells (`keep_owned`) in a few bytes, to send between processes: the
    bounding box of its cells in its outer region (`shape`), their labels there as uint16
    (uint32 past 65,535 cells), zlib-compressed."""

    shape: tuple[int, int]
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    dtype: str
    data: bytes

    @classmethod
    def pack(cls, owned: np.ndarray) -> "PackedCells":
        rows, cols = np.flatnonzero(owned.any(axis=1)), np.flatnonzero(owned.any(axis=0))
        box = (0, 0, 0, 0) if rows.size == 0 else (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
        dtype = np.uint16 if owned.max(initial=0) <= np.iinfo(np.uint16).max else LABEL_DTYPE
        crop = np.ascontiguousarray(owned[box[0]:box[1], box[2]:box[3]], dtype)
        return cls(tuple(owned.shape), tuple(map(int, box)), np.dtype(dtype).str,
                   zlib.compress(crop.tobytes(), 1))

    def unpack(self) -> np.ndarray:
        """The owned cells, (y, x) uint32 of the outer region."""
        y0, y1, x0, x1 = self.box
        owned = np.zeros(self.shape, LABEL_DTYPE)
        crop = np.frombuffer(zlib.decompress(self.data), self.dtype)
        owned[y0:y1, x0:x1] = crop.reshape(y1 - y0, x1 - x0)
        return owned


@dataclass
class BlockResult:
    """What `segment_blocks` found: the number of cells and of blocks."""

    n_cells: int = 0
    n_blocks: int = 0


def segment_blocks(shape: tuple[int, int], blocks: list[list[Block]],
                   predict: Callable[[Slices], object],
                   decode: Callable[[object, Slices], np.ndarray],
                   out_path, resolution: dict | None = None,
                   on_block: Callable[[np.ndarray, Slices, int], None] | None = None
                   ) -> BlockResult:
    """Segment an image block by block into a tiled uint32 BigTIFF at `out_path`:
    `assemble_blocks` of `owned_blocks(blocks, predict, decode)`."""
    return assemble_blocks(shape, blocks, owned_blocks(blocks, predict, decode), out_path,
                           resolution, on_block)


def owned_blocks(blocks: list[list[Block]], predict: Callable[[Slices], object],
                 decode: Callable[[object, Slices], np.ndarray]) -> Iterator[np.ndarray]:
    """The cells each block owns (`owned_cells`), block after block in raster order.

    predict(outer) -> maps of the outer region (runs the network, in this thread);
    decode(maps, outer) -> (y, x) int labels of the outer region (runs in a worker thread
    while the next block is predicted)."""
    with ThreadPoolExecutor(1, thread_name_prefix="decode-block") as pool:
        pending: deque = deque()
        for row in blocks:
            for block in row:
                maps = predict(block.outer)
                pending.append(pool.submit(owned_cells, decode, maps, block))
                del maps
                if len(pending) > 1:
                    yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def owned_cells(decode, maps, block: Block) -> np.ndarray:
    """`keep_owned` of decode(maps, block.outer): (y, x) uint32 of the outer region."""
    labels = decode(maps, block.outer)
    expected = tuple(s.stop - s.start for s in block.outer)
    if labels.shape != expected:
        raise ValueError(f"decode returned {labels.shape} for a block of {expected}")
    return keep_owned(labels, block)


def assemble_blocks(shape: tuple[int, int], blocks: list[list[Block]],
                    owned: Iterable[np.ndarray], out_path, resolution: dict | None = None,
                    on_block: Callable[[np.ndarray, Slices, int], None] | None = None,
                    tile_sink: Callable[[int, int, np.ndarray], None] | None = None
                    ) -> BlockResult:
    """Paste each block's owned cells into a tiled uint32 BigTIFF at `out_path`.

    owned: per block in raster order, its cells as `keep_owned` gives them ((y, x) uint32
    of its outer region, 1..n). `resolution`: extra tifffile write arguments (pixel size,
    description). `out_path` is written directly: give it a temporary path and rename on
    success. on_block(cells, outer, label_offset) is called once per block pasted, with
    the block's cells as they are in the labels written: cells (y, x) uint32 of the outer
    region, numbered from 1 (label_offset + k is the cell's label in the image), 0 elsewhere.
    tile_sink(y, x, tile) gets each (<= 256, <= 256) tile of the labels as it is written.
    """
    result = BlockResult()
    tiles = _label_tiles(shape, blocks, iter(owned), result, on_block)
    if tile_sink is not None:
        tiles = _teed(tiles, shape[1], tile_sink)
    write_tiled(out_path, shape, LABEL_DTYPE, tiles, TILE, resolution)
    return result


def _teed(tiles: Iterator[np.ndarray], width: int, sink) -> Iterator[np.ndarray]:
    """`tiles` (row-major, TILE apart, `width` px wide), each given to sink(y, x, tile) too."""
    per_row = math.ceil(width / TILE)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, per_row)
        sink(row * TILE, column * TILE, tile)
        yield tile


def _label_tiles(shape, blocks, owned: Iterator[np.ndarray], result: BlockResult,
                 on_block) -> Iterator[np.ndarray]:
    """Tiles of the labels image, row-major, produced block row by block row."""
    canvas = _Canvas(shape[1])
    for row_index, row in enumerate(blocks):
        for block in row:
            _paste(canvas, block, next(owned), result, on_block)
        if row_index + 1 < len(blocks):  # no later block reaches above the next row's halo
            yield from canvas.emit(blocks[row_index + 1][0].outer[0].start)
    yield from canvas.emit(shape[0], final=True)


def _paste(canvas: "_Canvas", block: Block, owned: np.ndarray, result: BlockResult,
           on_block) -> None:
    n = int(owned.max(initial=0))
    owned = np.where(owned > 0, owned + np.uint32(result.n_cells), 0).astype(LABEL_DTYPE)
    pasted = canvas.paste(owned, block.outer)  # globally unique labels
    if on_block is not None:
        cells = np.where(pasted > result.n_cells, pasted - result.n_cells, 0).astype(LABEL_DTYPE)
        on_block(cells, block.outer, result.n_cells)
    result.n_cells += n
    result.n_blocks += 1


class _Canvas:
    """The labels of rows [top, top + height) of the image, not yet written."""

    def __init__(self, width: int):
        self.top = 0
        self.rows = np.zeros((0, width), LABEL_DTYPE)

    def paste(self, owned: np.ndarray, outer: Slices) -> np.ndarray:
        """Paste `owned` (labels of the region `outer`) into the free pixels; returns the
        labels of the region as they now are (a view)."""
        bottom = outer[0].stop
        if bottom > self.top + len(self.rows):
            grown = np.zeros((bottom - self.top, self.rows.shape[1]), LABEL_DTYPE)
            grown[:len(self.rows)] = self.rows
            self.rows = grown
        if outer[0].start < self.top:
            raise AssertionError("a block reaches rows that were already written")
        target = self.rows[outer[0].start - self.top:bottom - self.top, outer[1]]
        free = (owned > 0) & (target == 0)  # the block written first keeps a shared pixel
        target[free] = owned[free]
        return target

    def emit(self, stop: int, final: bool = False) -> Iterator[np.ndarray]:
        """Yield the tiles of every complete row of tiles above `stop` (all rows if final)."""
        rows = stop - self.top
        n_tile_rows = math.ceil(rows / TILE) if final else rows // TILE
        width = self.rows.shape[1]
        for _ in range(max(0, n_tile_rows)):
            band = self.rows[:TILE]
            if len(band) < TILE and not final:
                break
            for x in range(0, width, TILE):
                yield band[:, x:x + TILE]
            self.rows = self.rows[TILE:]
            self.top += TILE
