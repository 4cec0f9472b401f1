"""One huge image on a dask cluster: the blocks of block mode as tasks on the workers.

A worker measures the image once (`plan_image`: the percentile bounds of the normalisation
and the size estimate, over the whole image as block mode measures them, and the block
plan). Then each block task (`segment_block`) reads its own outer region (halo included)
from the file, predicts, decodes and returns the cells its core owns, packed
(`blocks.PackedCells`: the labels of their bounding box, zlib-compressed). The client
pastes them in raster order with block mode's own code (`block_pipeline.write_block_labels`),
so the labels are those of a single-process run: numbered globally as the blocks arrive
(each block's count shifts the next one's labels; no second pass), streamed to the tiled
BigTIFF, with the block-mode exports built from them.

Memory: a worker holds one block at a time. The client holds the band of label rows not yet
written (about a block row: block size plus two halos, times the width, 4 bytes a pixel)
and at most `window` packed results; no pixel of the image passes through it (the
measurements export reads the file's regions itself).
"""

import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cellvit_cli.bigtiff import open_regions
from cellvit_cli.inference.block_pipeline import (block_bar, block_exports, block_steps,
                                                  block_zoom, label_options, model_input,
                                                  on_block_done, plan_image_blocks,
                                                  write_block_labels)
from cellvit_cli.inference.blocks import Block, PackedCells, owned_cells
from cellvit_cli.inference.inputs import Job
from cellvit_cli.inference.segmenter import SegmentSettings
from cellvit_cli.inference.sizing import SizeEstimate
from cellvit_cli.inference.worker_cache import (LOCK, cached_regions, cached_segmenter,
                                                captured_logs)
from cellvit_cli.io import InputError

log = logging.getLogger(__name__)

__all__ = ["ImagePlan", "plan_image", "segment_block", "segment_image_blocks"]


@dataclass(frozen=True)
class ImagePlan:
    """What the block tasks of one image share, measured once: shape (Y, X); pixel_size
    (y, x) um or None; bounds: the normalisation's (low, high), each (C,) float64; the
    size estimate; the rows of blocks; the labels' metadata; the decoding mode."""

    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None
    bounds: tuple[np.ndarray, np.ndarray]
    estimate: SizeEstimate
    blocks: list[list[Block]]
    metadata: dict
    mode: str


def segment_image_blocks(client, job: Job, settings: SegmentSettings, model,
                         exports: dict, window: int | None = None
                         ) -> tuple[int, int, ImagePlan]:
    """Segment the image of `job` into job.outputs["labels"] (atomic), its blocks run as
    tasks on the workers of `client`; `exports`: {name in export.BLOCK_EXPORTS: path}.

    window: how many block tasks are in flight at once (None: twice the workers' threads).
    Returns (cells, pixels, plan). InputError naming the image when it cannot be planned,
    and the block (row, column, pixels) when a block's task fails; nothing is left under
    an output name then."""
    quiet = replace(settings, progress=False)  # no progress bars on the workers
    plan = _run_task(client, job.path, "plan", plan_image, job, quiet, model)
    window = window or max(2, 2 * sum(client.nthreads().values()))
    with contextlib.ExitStack() as stack:
        writers = None
        if exports:
            regions = stack.enter_context(contextlib.closing(
                open_regions(Path(job.path), settings.channel)))
            writers = block_exports(job.path, regions, settings, exports, stack)
        bar = stack.enter_context(block_bar(plan.blocks, job.path, settings.progress))
        owned = _owned_from_workers(client, job.path, plan, quiet, model, window)
        cells = write_block_labels(job.outputs["labels"], plan.shape, plan.blocks, owned,
                                   label_options(plan.pixel_size, plan.metadata),
                                   on_block_done(writers, bar, contextlib.nullcontext),
                                   exports=writers)
    return cells, plan.shape[0] * plan.shape[1], plan


def _owned_from_workers(client, path, plan: ImagePlan, settings: SegmentSettings, model,
                        window: int) -> Iterator[np.ndarray]:
    """Each block's owned cells ((y, x) uint32 of its outer region), in raster order, from
    `segment_block` tasks submitted in that order, `window` at a time."""
    places = [(r, c, block) for r, row in enumerate(plan.blocks) for c, block in enumerate(row)]
    run = uuid.uuid4().hex
    pending: deque = deque()

    def submit(index: int) -> None:
        block = places[index][2]
        pending.append(client.submit(segment_block, path, block, plan.bounds,
                                     plan.estimate.zoom, settings, model,
                                     key=f"cellvit-block-{run}-{index}"))

    for index in range(min(window, len(places))):
        submit(index)
    try:
        for index, (row, column, block) in enumerate(places):
            future = pending.popleft()
            try:
                packed = future.result()
            except Exception as err:  # the task failed, or its workers died too often
                raise _block_error(path, row, column, block, err) from err
            future.release()
            if index + window < len(places):
                submit(index + window)
            yield packed.unpack()
    finally:
        client.cancel(list(pending))


def _block_error(path, row: int, column: int, block: Block, err: Exception) -> InputError:
    ys, xs = block.core
    detail = err.problem if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
    return InputError(path, f"block (row {row}, column {column}; rows {ys.start}:{ys.stop}, "
                            f"columns {xs.start}:{xs.stop}) failed: {detail}")


def _run_task(client, path, name: str, function, *args):
    """The result of one task whose value comes with log lines: the lines are logged here;
    a failure is an InputError naming `path` (the task's own when it raised one)."""
    try:
        value, lines = client.submit(function, *args,
                                     key=f"cellvit-{name}-{uuid.uuid4().hex}").result()
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"{name} task failed: {type(err).__name__}: {err}") from err
    for level, line in lines:
        log.log(level, "%s", line)
    return value


# --- on the workers -------------------------------------------------------------------

def plan_image(job: Job, settings: SegmentSettings, model
               ) -> tuple[ImagePlan, list[tuple[int, str]]]:
    """Measure the image of `job` as block mode does before its first block: (its plan,
    the (level, message) lines logged meanwhile). InputError as `segment_file_blocks`."""
    from cellvit_cli.inference.pipeline import label_metadata

    with LOCK, captured_logs() as lines:
        segmenter = cached_segmenter(settings, model)
        regions = cached_regions(job.path, settings.channel)
        source = model_input(job.path, regions, segmenter)
        estimate = block_zoom(job.path, source, segmenter)
        plan = ImagePlan(source.shape, regions.pixel_size, (source.low, source.high), estimate,
                         plan_image_blocks(source.shape, segmenter, estimate.zoom),
                         label_metadata(estimate, segmenter, job), segmenter.mode)
    return plan, lines


def segment_block(path, block: Block, bounds, zoom: float, settings: SegmentSettings,
                  model) -> PackedCells:
    """The cells `block` of the image at `path` owns, packed: its outer region read,
    normalised between `bounds`, zoomed by `zoom`, predicted and decoded."""
    with LOCK:
        segmenter = cached_segmenter(settings, model)
        source = model_input(path, cached_regions(path, settings.channel), segmenter, bounds)
        source.scale = zoom
        predict, decode = block_steps(source, segmenter)
        return PackedCells.pack(owned_cells(decode, predict(block.outer), block))
