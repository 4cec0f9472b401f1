"""Large TIFFs without loading them whole: read a region, write labels tile by tile.

`TiffRegionReader` reads any rectangle of a TIFF's first image series by decoding only
the tiles or strips that cover it (or through a memory map when the data is stored
uncompressed in one piece); `open_regions` wraps it in the checks of `io.read_image`.
`write_tiled` streams an iterator of tiles into a tiled, compressed BigTIFF. Both keep
memory bounded by the region or tile, not by the image.
"""

import logging
import math
import os
from collections.abc import Iterator

import numpy as np
import tifffile

from cellvit_cli.io import (READ_ERRORS, InputError, alpha_samples, check_pixel_type,
                            check_pixels, is_zarr, named_errors, read_image)
from cellvit_cli.preprocess import select_channel
from cellvit_cli.resolution import tiff_pixel_size
from cellvit_cli.zarr_io import ZarrRegionReader

log = logging.getLogger(__name__)

TILE = 256
JPEG_COMPRESSIONS = {6, 7, 33007, 34892}


class UnsupportedLayout(ValueError):
    """The TIFF's axes or storage cannot be read region by region (read it whole instead)."""


class TiffRegionReader:
    """Regions of the first image series of a TIFF as (C, y, x) arrays of its native dtype.

    Handles series whose axes, once length-1 axes other than Y and X are dropped, are YX,
    YXS (samples, e.g. RGB), SYX (planar samples) or CYX (one page per channel). Alpha
    samples are dropped, as `io.read_image` drops them. Raises `UnsupportedLayout` for
    others (Z stacks, time series, ...). Use as a context manager or call `close`.
    pixel_size: (y, x) um from the file's metadata, or None (also when it is unreadable).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._tif = tifffile.TiffFile(self.path)
        try:
            self._pages, shape = self._layout(self._tif.series[0])
        except Exception:
            self._tif.close()
            raise
        try:
            self.pixel_size = tiff_pixel_size(self._tif)
        except READ_ERRORS:
            self.pixel_size = None
        key = self._pages[0].keyframe
        self.dtype = key.dtype
        self._alpha = alpha_samples(key) if len(self._pages) == 1 and shape[0] > 1 else []
        self.shape = (shape[0] - len(self._alpha), *shape[1:])

    @staticmethod
    def _layout(series) -> tuple[list, tuple[int, int, int]]:
        kept = [(a, n) for a, n in zip(series.axes, series.shape) if n > 1 or a in "YX"]
        axes, sizes = "".join(a for a, _ in kept), dict(kept)
        pages = list(series.pages)
        if any(p is None for p in pages):
            raise UnsupportedLayout(f"{series.parent.filehandle.name}: pages not indexed")
        page = pages[0].keyframe
        if axes in ("YX", "YXS", "SYX") and len(pages) == 1:
            channels = sizes.get("S", 1)
        elif axes == "CYX" and len(pages) == sizes["C"]:
            channels = 1
        else:
            raise UnsupportedLayout(f"{series.parent.filehandle.name}: axes {series.axes} "
                                    f"{series.shape} cannot be read block by block")
        if page.shaped[1] != 1:  # image depth
            raise UnsupportedLayout(f"{series.parent.filehandle.name}: volumetric TIFF page")
        return pages, (max(channels, len(pages)), page.imagelength, page.imagewidth)

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "TiffRegionReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        """The (C, y, x) region `ys`, `xs` (slices with start and stop, step 1)."""
        y0, y1, _ = ys.indices(self.shape[1])
        x0, x1, _ = xs.indices(self.shape[2])
        parts = [self._read_page(page, y0, y1, x0, x1) for page in self._pages]
        if len(parts) > 1:
            return np.concatenate(parts, axis=0)
        return np.delete(parts[0], self._alpha, axis=0) if self._alpha else parts[0]

    def _read_page(self, page, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if page.is_contiguous and not page.keyframe.is_tiled:
            return self._read_contiguous(page, y0, y1, x0, x1)
        return self._read_segments(page, y0, y1, x0, x1)

    def _read_contiguous(self, page, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """A region of uncompressed data stored in one piece, through a short-lived memory
        map (unmapped at once, so the pages read do not stay resident)."""
        dtype = np.dtype(page.keyframe.dtype).newbyteorder(self._tif.byteorder)
        full = np.memmap(self.path, dtype=dtype, mode="r", offset=page.dataoffsets[0],
                         shape=tuple(page.shaped))  # (planes, depth=1, Y, X, samples)
        region = np.array(full[:, 0, y0:y1, x0:x1, :], dtype=dtype.newbyteorder("="))
        del full
        return region.transpose(0, 3, 1, 2).reshape(-1, y1 - y0, x1 - x0)

    def _read_segments(self, page, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        key = page.keyframe  # a TiffFrame shares the format of its key page
        planes, _, _, _, samples = key.shaped
        out = np.zeros((planes, y1 - y0, x1 - x0, samples), key.dtype)
        seg_y, seg_x = key.chunks[:2] if key.is_tiled else (key.rowsperstrip, key.imagewidth)
        n_y = math.ceil(key.imagelength / seg_y)
        n_x = math.ceil(key.imagewidth / seg_x)
        kwargs = {"_fullsize": key.is_tiled}
        if key.compression in JPEG_COMPRESSIONS:
            kwargs.update(jpegtables=key.jpegtables, jpegheader=key.jpegheader)
        fh = key.parent.filehandle
        for plane in range(planes):
            for ty in range(y0 // seg_y, (y1 - 1) // seg_y + 1):
                for tx in range(x0 // seg_x, (x1 - 1) // seg_x + 1):
                    index = (plane * n_y + ty) * n_x + tx
                    offset, count = page.dataoffsets[index], page.databytecounts[index]
                    if count == 0:
                        continue  # an empty segment reads as zeros
                    with fh.lock:
                        fh.seek(offset)
                        data = fh.read(count)
                    segment, _, _ = key.decode(data, index, **kwargs)
                    segment = segment.reshape(-1, segment.shape[-2], segment.shape[-1])
                    sy, sx = ty * seg_y, tx * seg_x
                    iy = slice(max(y0, sy), min(y1, sy + segment.shape[0]))
                    ix = slice(max(x0, sx), min(x1, sx + segment.shape[1]))
                    out[plane, iy.start - y0:iy.stop - y0, ix.start - x0:ix.stop - x0] = \
                        segment[iy.start - sy:iy.stop - sy, ix.start - sx:ix.stop - sx]
        return out.transpose(0, 3, 1, 2).reshape(-1, y1 - y0, x1 - x0)


class CheckedRegions:
    """Regions of a TIFF (a `TiffRegionReader`) checked as `io.read_image` checks a whole
    image: numeric pixels, `channel` in range and selected, NaN/inf refused; InputError
    naming the file. Every pixel read is checked. shape: (C, Y, X), C = 1 with `channel`;
    pixel_size: the reader's."""

    def __init__(self, reader: TiffRegionReader, channel: int | None = None):
        self.reader, self.channel, self.pixel_size = reader, channel, reader.pixel_size
        check_pixel_type(reader.path, reader.dtype)
        if channel is not None:  # the range check of read_image, on the shape alone
            with named_errors(reader.path):
                select_channel(np.empty((reader.shape[0], 0, 0)), channel)
        self.shape = (1 if channel is not None else reader.shape[0], *reader.shape[1:])

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        """The (C, y, x) region `ys`, `xs` in the file's dtype."""
        data = self.reader.read(ys, xs)
        if self.channel is not None:
            data = select_channel(data, self.channel)
        check_pixels(self.reader.path, data)
        return data

    def close(self) -> None:
        self.reader.close()


class ArrayRegions:
    """Regions of an in-memory (C, Y, X) array, with the interface of `CheckedRegions`."""

    def __init__(self, data: np.ndarray, pixel_size: tuple[float, float] | None = None):
        self.data, self.shape, self.pixel_size = data, data.shape, pixel_size

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        return self.data[:, ys, xs]

    def close(self) -> None:
        """Nothing to close: the interface of `CheckedRegions`."""


def open_regions(path: str | os.PathLike, channel: int | None = None
                 ) -> CheckedRegions | ArrayRegions:
    """The regions of the TIFF at `path` (channel `channel` if given), checked as
    `io.read_image` checks it; read whole by `read_image` when its layout cannot be read
    region by region. A zarr folder is read region by region (`zarr_io`). InputError
    naming `path` when it cannot be read or is refused."""
    try:
        reader = ZarrRegionReader(path) if is_zarr(path) else TiffRegionReader(path)
    except UnsupportedLayout as err:
        log.warning("%s; reading it whole", err)
        image = read_image(path, channel)
        return ArrayRegions(image.data, image.pixel_size)
    except READ_ERRORS as err:
        raise InputError(path, f"cannot read TIFF: {err}") from err
    try:
        return CheckedRegions(reader, channel)
    except InputError:
        reader.close()
        raise


def write_tiled(path: str | os.PathLike, shape: tuple[int, int], dtype, tiles: Iterator[np.ndarray],
                tile: int = TILE, resolution: dict | None = None) -> None:
    """Write (Y, X) `shape` as a zlib-compressed tiled BigTIFF from `tiles`.

    `tiles` yields (tile, tile) arrays of `dtype` in row-major order (edge tiles may be
    smaller); `resolution` holds extra `TiffWriter.write` arguments (resolution,
    resolutionunit). Not atomic by itself: write to a temporary path and rename.
    """
    dtype = np.dtype(dtype)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(data=(_full_tile(t, tile, dtype) for t in tiles), shape=tuple(shape),
                     dtype=dtype, tile=(tile, tile), compression="zlib", photometric="minisblack",
                     metadata=None, **(resolution or {}))


def _full_tile(data: np.ndarray, tile: int, dtype) -> np.ndarray:
    if data.shape == (tile, tile) and data.dtype == dtype:
        return data
    full = np.zeros((tile, tile), dtype)
    full[:data.shape[0], :data.shape[1]] = data
    return full


def retype_tiled(src: str | os.PathLike, dst: str | os.PathLike, dtype,
                 resolution: dict | None = None, tile: int = TILE) -> None:
    """Copy a one-channel tiled TIFF into a tiled BigTIFF of `dtype`, one row of tiles at a time
    (e.g. uint32 labels to uint16 once the largest label is known to fit)."""
    with TiffRegionReader(src) as reader:
        _, n_y, n_x = reader.shape

        def tiles() -> Iterator[np.ndarray]:
            for y in range(0, n_y, tile):
                band = reader.read(slice(y, y + tile), slice(0, n_x))[0].astype(dtype)
                for x in range(0, n_x, tile):
                    yield band[:, x:x + tile]

        write_tiled(dst, (n_y, n_x), dtype, tiles(), tile, resolution)
