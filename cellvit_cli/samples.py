"""Real sample data for tests and benchmarks: StarDist's nuclei image, and big mosaics of it.

The sample is a 512 x 512 fluorescence image of nuclei from the 2018 Data Science Bowl
(BBBC038), shipped with the `stardist` package, with 125 annotated nuclei (labels up to 183,
not consecutive). A mosaic tiles randomly flipped/rotated copies of it, so every object in a
mosaic is a real, annotated nucleus.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from skimage.segmentation import relabel_sequential

from .io import atomic_path

UINT16_MAX = np.iinfo(np.uint16).max
BIGTIFF_PIXELS = 1 << 26  # 8192 x 8192: write BigTIFF from here on


def load_nuclei_sample() -> tuple[np.ndarray, np.ndarray]:
    """StarDist's 2D nuclei sample: image (512, 512) uint16, labels (512, 512) int32."""
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)
    return image, labels.astype(np.int32)


def mosaic_label_dtype(max_label: int) -> np.dtype:
    """uint16 if `max_label` fits, else uint32 (the rule `io.write_labels` applies on disk)."""
    return np.dtype(np.uint16 if max_label <= UINT16_MAX else np.uint32)


def make_mosaic(image: np.ndarray, labels: np.ndarray, shape: tuple[int, int],
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tile randomly flipped/rotated copies of (image, labels) into a (Y, X) mosaic.

    image: (y, x) any dtype; labels: (y, x) int. Tiles are laid row-major on a grid of
    (y, x) cells; the last row/column is cropped when `shape` is not a multiple. Each copy's
    objects are renumbered 1..n, offset by n times the copy's index, so labels are unique
    across copies. Returns image (Y, X) of image's dtype and labels (Y, X) uint16, or
    uint32 when the largest label does not fit uint16. Memory: the two outputs plus O(tile).
    """
    shape = tuple(int(s) for s in shape)
    tiles = MosaicTiles(image, labels, shape, seed)
    out_image = np.empty(shape, image.dtype)
    out_labels = np.zeros(shape, tiles.label_dtype)
    for (y0, x0), image_tile, labels_tile in tiles:
        h, w = min(tiles.tile_shape[0], shape[0] - y0), min(tiles.tile_shape[1], shape[1] - x0)
        out_image[y0:y0 + h, x0:x0 + w] = image_tile[:h, :w]
        out_labels[y0:y0 + h, x0:x0 + w] = labels_tile[:h, :w]
    return out_image, out_labels


class MosaicTiles:
    """The tiles of a mosaic, row-major: iterate for ((y0, x0), image_tile, labels_tile).

    Each tile has the sample's full shape (also at the cropped edges), so the iteration can
    feed a tiled TIFF writer directly. Variants: the 8 flips/rotations of a square sample,
    the 4 flips of a rectangular one; copy k uses variant `choices[k]`.
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray, shape: tuple[int, int],
                 seed: int = 0):
        if image.shape != labels.shape or image.ndim != 2:
            raise ValueError(f"image {image.shape} and labels {labels.shape} must be equal (Y, X)")
        labels, _, _ = relabel_sequential(np.asarray(labels))
        self.n_objects = int(labels.max())
        self.tile_shape = image.shape
        self.grid = tuple(-(-s // t) for s, t in zip(shape, self.tile_shape))
        self.label_dtype = mosaic_label_dtype(self.n_objects * self.grid[0] * self.grid[1])
        self.variants = _variants(image, labels.astype(self.label_dtype))
        rng = np.random.default_rng(seed)
        self.choices = rng.integers(len(self.variants), size=self.grid[0] * self.grid[1])

    def __len__(self) -> int:
        return len(self.choices)

    def __iter__(self) -> Iterator[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
        (ty, tx), n_cols = self.tile_shape, self.grid[1]
        for k, choice in enumerate(self.choices):
            image_tile, labels_tile, mask = self.variants[choice]
            out = np.zeros(self.tile_shape, self.label_dtype)
            np.add(labels_tile, self.n_objects * k, out=out, where=mask, casting="unsafe")
            yield ((k // n_cols) * ty, (k % n_cols) * tx), image_tile, out

    def image_tiles(self) -> Iterator[np.ndarray]:
        return (image_tile for _, image_tile, _ in self)

    def labels_tiles(self) -> Iterator[np.ndarray]:
        return (labels_tile for _, _, labels_tile in self)


def _variants(image: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """[(image, labels, mask)] for each flip/rotation keeping the shape, contiguous copies."""
    ops = [lambda a: a, np.flipud, np.fliplr, lambda a: a[::-1, ::-1]]
    if image.shape[0] == image.shape[1]:
        ops += [lambda a, op=op: op(a).T for op in ops]
    out = []
    for op in ops:
        labels_v = np.ascontiguousarray(op(labels))
        out.append((np.ascontiguousarray(op(image)), labels_v, labels_v > 0))
    return out


def write_mosaic_tiffs(image_path, labels_path, shape: tuple[int, int], seed: int = 0,
                       image: np.ndarray | None = None, labels: np.ndarray | None = None,
                       ) -> None:
    """Write a mosaic of the nuclei sample (or of image/labels) as two tiled, zlib TIFFs.

    Streams tile by tile (memory O(tile)); BigTIFF from 8192 x 8192 pixels on. Labels are
    uint16 or uint32 (`mosaic_label_dtype`). Both files are written atomically.
    """
    if image is None or labels is None:
        image, labels = load_nuclei_sample()
    shape = tuple(int(s) for s in shape)
    tiles = MosaicTiles(image, labels, shape, seed)
    for path, dtype, source in ((image_path, image.dtype, tiles.image_tiles),
                                (labels_path, tiles.label_dtype, tiles.labels_tiles)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, source(), shape=shape, dtype=dtype, tile=tiles.tile_shape,
                             compression="zlib", bigtiff=shape[0] * shape[1] >= BIGTIFF_PIXELS)
