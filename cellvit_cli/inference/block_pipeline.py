"""Block mode for one file: a TIFF of any size in, its labels BigTIFF (and exports) out.

The file is read region by region (`bigtiff.open_regions`, the checks of `io.read_image`),
turned into model input as whole-image mode would (`preprocess.RegionSource`), and
segmented block by block (`blocks.owned_blocks`, `blocks.assemble_blocks`) with one zoom for the whole image.
The ROI zip, GeoJSON and measurements CSV are built block by block from the cells each
block owns (`BlockExports`), so no export holds the whole labels image either.
`pipeline` sends here the images above the pixel budget.
"""

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cellvit_cli import export
from cellvit_cli.bigtiff import open_regions, retype_tiled
from cellvit_cli.inference.blocks import (LABEL_DTYPE, Block, assemble_blocks, check_zoom,
                                          halo_for, image_borders, owned_blocks, plan_blocks)
from cellvit_cli.inference.tiling import Slices
from cellvit_cli.io import (LABEL_METADATA_KEY, READ_ERRORS, InputError, atomic_path,
                            named_errors, remove_output)
from cellvit_cli.preprocess import RegionSource
from cellvit_cli.resolution import resolution_options
from cellvit_cli.zarr_io import ZarrLabels

UINT16_MAX = np.iinfo(np.uint16).max


def segment_file_blocks(path, out_path, segmenter, clock=None, estimate=None,
                        metadata=None, exports: dict | None = None) -> tuple[int, int, object]:
    """Segment the TIFF at `path` block by block into labels at `out_path` (atomic).

    segmenter: a `segmenter.Segmenter` (its predictor, decode, zoom, model config and
    settings.block_size / channel / measured_channels / progress). One zoom serves the
    whole image: that of `estimate` (a `sizing.SizeEstimate`), else the segmenter's,
    estimated from crops of the image when the segmenter has none. Labels are uint16 when
    the cells fit, else uint32, with the input's pixel size and `metadata(estimate)` (a
    JSON-able dict) in the description. exports: {name in export.BLOCK_EXPORTS: path} to write
    as well (see `BlockExports`). Returns (cells, pixels, estimate). Raises InputError
    when the file cannot be read or is refused as `read_image` refuses it, or the zoom
    shrinks it to nothing. clock(stage) is an optional timing context manager.
    """
    clock = clock or _no_clock
    settings = segmenter.settings
    with contextlib.ExitStack() as stack:
        with clock("read"):
            regions = open_regions(Path(path), settings.channel)
            stack.callback(regions.close)
            source = model_input(path, regions, segmenter)
            writers = block_exports(path, regions, settings, exports or {}, stack)
        with clock("size"):
            estimate = block_zoom(path, source, segmenter, estimate)
        source.scale = estimate.zoom
        blocks = plan_image_blocks(source.shape, segmenter, estimate.zoom)
        options = label_options(regions.pixel_size,
                                None if metadata is None else metadata(estimate))
        bar = stack.enter_context(block_bar(blocks, path, settings.progress))
        owned = owned_blocks(blocks, *block_steps(source, segmenter, clock))
        n_cells = write_block_labels(out_path, source.shape, blocks, owned, options,
                                     on_block_done(writers, bar, clock), clock, writers)
    return n_cells, source.shape[0] * source.shape[1], estimate


def block_zoom(path, source: RegionSource, segmenter, estimate=None):
    """`estimate`, else the `SizeEstimate` of the whole image of `source` (estimated from
    crops of it when the segmenter has no fixed zoom); InputError when its zoom shrinks the
    image to nothing."""
    if estimate is None:
        estimate = segmenter.estimate(source.shape, source.read, whole_pixels=0)
    check_zoom(path, source.shape, estimate.zoom)
    return estimate


def plan_image_blocks(shape: tuple[int, int], segmenter, zoom: float) -> list[list[Block]]:
    """The blocks of an image of `shape` (Y, X) segmented at `zoom` (settings.block_size,
    a halo for the model's cells)."""
    halo = halo_for(segmenter.loaded.config.median_diameter, zoom)
    return plan_blocks(shape, segmenter.settings.block_size, halo)


def block_bar(blocks: list[list[Block]], path, progress: bool):
    return tqdm(total=sum(map(len, blocks)), unit="block", desc=Path(path).name, leave=False,
                disable=None if progress else True)


def block_exports(path, regions, settings, exports: dict, stack: contextlib.ExitStack
                  ) -> "BlockExports | None":
    """The `BlockExports` of `exports` ({name: path}) for the file at `path`, or None when
    none is asked. Measurements read every channel of the file (opened again when
    `regions` holds one); InputError for a measured channel out of range."""
    if not exports:
        return None
    raw, channels = None, None
    if "measurements" in exports:
        raw = regions if settings.channel is None else open_regions(Path(path))
        if raw is not regions:
            stack.callback(raw.close)
        with named_errors(path):
            channels = settings.measured_channels(raw.shape[0])
    return BlockExports(exports, raw, regions.pixel_size, channels, Path(path).name,
                        regions.shape[1:])


def on_block_done(writers: "BlockExports | None", bar, clock) -> Callable:
    """The on_block(cells, outer, label_offset) of `blocks.assemble_blocks`: the block's
    cells to the exports, one step of the progress bar."""

    def on_block(cells: np.ndarray, outer: Slices, label_offset: int) -> None:
        if writers is not None:
            with clock("write"):
                writers.add(cells, outer, label_offset)
        bar.update()

    return on_block


def _no_clock(stage: str):
    return contextlib.nullcontext()


def model_input(path, regions, segmenter, bounds=None) -> RegionSource:
    """The model input of `regions` as the segmenter's settings ask. The percentile pass
    reads every pixel once unless `bounds` (those of an earlier pass) are given: InputError
    naming `path` when that fails."""
    settings = segmenter.settings
    try:
        if bounds is None:
            segmenter.warn_averaged(regions.shape[0], path)
        return RegionSource(regions, segmenter.loaded.config.in_channels,
                            percentiles=segmenter.percentiles, inverted=settings.invert,
                            bounds=bounds)
    except InputError:
        raise
    except READ_ERRORS as err:
        raise InputError(path, f"cannot read TIFF: {err}") from err


def block_steps(source: RegionSource, segmenter, clock=None) -> tuple[Callable, Callable]:
    """(predict(outer) -> maps, decode(maps, outer) -> labels at the input's size) of the
    blocks of `source`, for `blocks.owned_blocks`."""
    clock = clock or _no_clock

    def predict(outer: Slices) -> dict:
        with clock("read"):
            x = source.read(outer)
        return segmenter.predictor.predict(x)

    def decode(maps: dict, outer: Slices) -> np.ndarray:
        with clock("decode"):
            labels = segmenter.decode(maps, tuple(s.stop - s.start for s in outer))
            return segmenter.clean(labels, image_borders(outer, source.shape))

    return predict, decode


def label_options(pixel_size: tuple[float, float] | None, metadata: dict | None) -> dict:
    """tifffile write options of block mode's labels: `pixel_size` (y, x) um as resolution
    tags, `metadata` under "cellvit" in the description (`io.read_label_metadata`)."""
    options = {} if pixel_size is None else resolution_options(pixel_size)
    if metadata is not None:
        options["description"] = json.dumps({LABEL_METADATA_KEY: metadata})
    return options


def write_block_labels(out_path, shape: tuple[int, int], blocks, owned,
                       options: dict | None = None, on_block: Callable | None = None,
                       clock=None, exports: "BlockExports | None" = None) -> int:
    """Paste `owned` (each block's cells: `blocks.assemble_blocks`) into a uint32 temporary
    file, narrow it to uint16 if the cells fit, and move it to `out_path` (atomic); returns
    the number of cells. options: tifffile write options (`label_options`); on_block: as
    `assemble_blocks`'s. `exports` (open while the blocks run, fed by `on_block`) are
    finished before the labels; those finished are removed again when the labels cannot
    be written."""
    clock = clock or _no_clock
    try:
        with atomic_path(out_path) as final:
            wide = final.with_name(final.name + ".uint32.tif")
            try:
                with exports or contextlib.nullcontext():
                    result = assemble_blocks(shape, blocks, owned, wide, options, on_block,
                                             exports.tile_sink if exports else None)
                with clock("write"):
                    _narrow(wide, final, result.n_cells, options)
            finally:
                wide.unlink(missing_ok=True)
    except BaseException:
        if exports is not None:
            exports.remove_written()
        raise
    return result.n_cells


def _narrow(wide: Path, final: Path, n_cells: int, options: dict | None) -> None:
    """The uint32 labels at `wide` as uint16 at `final` when `n_cells` fit, else moved."""
    if n_cells <= UINT16_MAX:
        retype_tiled(wide, final, np.uint16, options)
    else:
        os.replace(wide, final)


class BlockExports:
    """The ROI zip, GeoJSON, measurements CSV and OME-Zarr labels of one image, built block
    by block.

    paths: {name in export.BLOCK_EXPORTS: path}; raw: the image's regions (every channel, raw
    intensities: `bigtiff.open_regions`), needed for measurements only; pixel_size: (y, x)
    um or None; channels: the indices of raw's channels to measure; image_name: the
    measurements' image column; shape: the image's (Y, X), needed for the zarr only. Use as
    a context manager around the blocks: each output is written to a temporary file (or
    folder) and renamed into place on a clean exit (`export`'s writers, `zarr_io.ZarrLabels`).
    The cell exports are fed by `add`, the zarr by `tile_sink` (the labels' tiles as they
    are written). Memory: one block's cells and raw region at a time (plus the ROI zip's
    directory, about half a kilobyte per cell).
    """

    def __init__(self, paths: dict, raw=None, pixel_size=None, channels=None,
                 image_name: str | None = None, shape: tuple[int, int] | None = None):
        unknown = set(paths) - set(export.BLOCK_EXPORTS)
        if unknown:
            raise ValueError(f"block mode cannot write {sorted(unknown)}")
        makers = {"rois": lambda p: export.RoiZipWriter(p),
                  "geojson": lambda p: export.GeoJsonWriter(p, pixel_size),
                  "measurements": lambda p: export.MeasurementsWriter(
                      p, pixel_size, channels=channels, image_name=image_name)}
        self.writers = [makers[name](path) for name, path in paths.items() if name != "zarr"]
        self.zarr = (ZarrLabels(paths["zarr"], shape, LABEL_DTYPE, pixel_size)
                     if "zarr" in paths else None)
        self.raw = raw if "measurements" in paths else None

    @property
    def tile_sink(self) -> Callable[[int, int, np.ndarray], None] | None:
        """sink(y, x, tile) writing the labels' tiles into the zarr, or None without one."""
        return None if self.zarr is None else self.zarr.write

    def __enter__(self) -> "BlockExports":
        with contextlib.ExitStack() as stack:
            for writer in [*self.writers, *([self.zarr] if self.zarr is not None else [])]:
                stack.enter_context(writer)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def add(self, cells: np.ndarray, outer: Slices, label_offset: int) -> None:
        """Add one block's cells ((y, x) uint32 of the region `outer`, cell k is label
        label_offset + k), cropped to their bounding box."""
        ys, xs = _bounding_box(cells)
        region = (slice(outer[0].start + ys.start, outer[0].start + ys.stop),
                  slice(outer[1].start + xs.start, outer[1].start + xs.stop))
        image = None if self.raw is None else self.raw.read(*region)
        placed = export.Cells(cells[ys, xs], (region[0].start, region[1].start), label_offset,
                              image)
        for writer in self.writers:
            writer.add(placed)

    def remove_written(self) -> None:
        """Remove the outputs already renamed into place (when the labels they go with, or
        another export, failed)."""
        for writer in [*self.writers, *([self.zarr] if self.zarr is not None else [])]:
            if writer.written:
                remove_output(writer.path)


def _bounding_box(labels: np.ndarray) -> Slices:
    """The smallest (ys, xs) holding every nonzero pixel of `labels`; its first pixel when
    there are none (an empty set still gives the CSV its header)."""
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    if rows.size == 0:
        return slice(0, 1), slice(0, 1)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
