"""Block mode for one file: a TIFF of any size in, its labels BigTIFF out.

The file is read region by region (`bigtiff.open_regions`, the checks of `io.read_image`),
turned into model input as whole-image mode would (`preprocess.RegionSource`), and
segmented block by block (`blocks.segment_blocks`) with one zoom for the whole image.
`pipeline` sends here the images above the pixel budget.
"""

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cellvit_cli.bigtiff import open_regions, retype_tiled
from cellvit_cli.inference.blocks import (check_zoom, halo_for, image_borders, plan_blocks,
                                          segment_blocks)
from cellvit_cli.inference.tiling import Slices
from cellvit_cli.io import LABEL_METADATA_KEY, READ_ERRORS, InputError, atomic_path
from cellvit_cli.preprocess import RegionSource
from cellvit_cli.resolution import resolution_options

UINT16_MAX = np.iinfo(np.uint16).max


def segment_file_blocks(path, out_path, segmenter, clock=None, estimate=None,
                        metadata=None) -> tuple[int, int, object]:
    """Segment the TIFF at `path` block by block into labels at `out_path` (atomic).

    segmenter: a `segmenter.Segmenter` (its predictor, decode, zoom, model config and
    settings.block_size / channel / progress). One zoom serves the whole image: that of
    `estimate` (a `sizing.SizeEstimate`), else the segmenter's, estimated from crops of the
    image when the segmenter has none. Labels are uint16 when the cells fit, else uint32,
    with the input's pixel size and `metadata(estimate)` (a JSON-able dict) in the
    description. Returns (cells, pixels, estimate). Raises InputError when the file cannot
    be read or is refused as `read_image` refuses it, or the zoom shrinks it to nothing.
    clock(stage) is an optional timing context manager.
    """
    clock = clock or _no_clock
    settings = segmenter.settings
    with clock("read"):
        regions = open_regions(Path(path), settings.channel)
    try:
        with clock("read"):
            source = _model_input(path, regions, segmenter)
        if estimate is None:
            with clock("size"):
                estimate = segmenter.estimate(source.shape, source.read, whole_pixels=0)
        check_zoom(path, source.shape, estimate.zoom)
        source.scale = estimate.zoom
        halo = halo_for(segmenter.loaded.config.median_diameter, estimate.zoom)
        blocks = plan_blocks(source.shape, settings.block_size, halo)
        options = label_options(regions.pixel_size,
                                None if metadata is None else metadata(estimate))
        bar = tqdm(total=sum(map(len, blocks)), unit="block", desc=Path(path).name,
                   leave=False, disable=None if settings.progress else True)
        with bar:
            n_cells = write_block_labels(out_path, source.shape, blocks,
                                         *_block_steps(source, segmenter, clock), options,
                                         bar.update, clock)
    finally:
        regions.close()
    return n_cells, source.shape[0] * source.shape[1], estimate


def _no_clock(stage: str):
    return contextlib.nullcontext()


def _model_input(path, regions, segmenter) -> RegionSource:
    """The model input of `regions` as the segmenter's settings ask. The percentile pass
    reads every pixel once: InputError naming `path` when that fails."""
    settings = segmenter.settings
    try:
        segmenter.warn_averaged(regions.shape[0], path)
        return RegionSource(regions, segmenter.loaded.config.in_channels,
                            percentiles=segmenter.percentiles, inverted=settings.invert)
    except InputError:
        raise
    except READ_ERRORS as err:
        raise InputError(path, f"cannot read TIFF: {err}") from err


def _block_steps(source: RegionSource, segmenter, clock) -> tuple[Callable, Callable]:
    """(predict(outer) -> maps, decode(maps, outer) -> labels at the input's size) of the
    blocks of `source`, for `blocks.segment_blocks`."""

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


def write_block_labels(out_path, shape: tuple[int, int], blocks, predict, decode,
                       options: dict | None = None, on_block: Callable[[], None] | None = None,
                       clock=None) -> int:
    """Run `blocks.segment_blocks` into a uint32 temporary file, narrow it to uint16 if the
    cells fit, and move it to `out_path` (atomic); returns the number of cells.
    options: tifffile write options (`label_options`)."""
    clock = clock or _no_clock
    with atomic_path(out_path) as final:
        wide = final.with_name(final.name + ".uint32.tif")
        try:
            result = segment_blocks(shape, blocks, predict, decode, wide, options, on_block)
            if result.n_cells <= UINT16_MAX:
                with clock("write"):
                    retype_tiled(wide, final, np.uint16, options)
            else:
                os.replace(wide, final)
        finally:
            wide.unlink(missing_ok=True)
    return result.n_cells
