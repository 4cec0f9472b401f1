"""The `cellvit segment` engine: TIFF files in, label images (and exports) out.

`segment_paths` runs a folder (or list) of images: a reader thread reads the next images
and finds the zoom of each (`sizing.py`), the network predicts the tiles of several images
per batch, and decoder threads decode and write finished images beside it. Images above a
pixel budget go through block mode (`block_pipeline.py`). One image in memory:
`segment_array`.
"""

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cellvit_cli import export
from cellvit_cli.device import precision_name
from cellvit_cli.inference.block_pipeline import segment_file_blocks
from cellvit_cli.inference.blocks import check_zoom
from cellvit_cli.inference.fingerprint import run_fingerprint
from cellvit_cli.inference.inputs import (Job, find_inputs, jobs_to_do, plan_jobs,
                                         prepare_folders)
from cellvit_cli.inference.segmenter import (BLOCK_MODES, SegmentSettings, Segmenter,
                                             segment_array, segment_array_with_size,
                                             uses_blocks)
from cellvit_cli.inference.sizing import SizeEstimate
from cellvit_cli.inference.summary import SegmentReport, finish_report, log_done, record_of
from cellvit_cli.io import (InputError, image_shape, named_errors, read_image, remove_output,
                            temp_target, write_labels)
from cellvit_cli.preprocess import rescale, resize_labels, select_channel
from cellvit_cli.zarr_io import write_zarr_labels

log = logging.getLogger(__name__)

PREFETCH = 2                      # images read ahead of the network

__all__ = ["BLOCK_MODES", "SegmentReport", "SegmentSettings", "Segmenter", "segment_array",
           "segment_array_with_size", "segment_paths"]


class _Clock:
    """Seconds spent per stage, summed over threads."""

    def __init__(self, totals: dict[str, float]):
        self.totals, self._lock = totals, threading.Lock()

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - start


def segment_paths(inputs, out_dir, settings: SegmentSettings | None = None,
                  model=None) -> SegmentReport:
    """Segment TIFF files, folders or globs into `out_dir`; see `SegmentSettings`.

    Writes OUT/<stem>_labels.tif per image (and the exports asked for) and OUT/summary.csv
    (with measure, also OUT/cells.csv: the cells of every image, `write_run_cells`);
    images whose outputs all exist are skipped unless `settings.overwrite`. An image that
    cannot be read, segmented or written is logged (one line naming it) and listed in the
    report's `failed`, with none of its outputs of this run left behind; the others are
    still done. Raises InputError naming `out_dir` when it cannot be a writable folder.
    """
    settings = settings or SegmentSettings()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    found = find_inputs(inputs, settings.recursive, settings.pattern, out_dir)
    jobs = plan_jobs(found, out_dir, run_fingerprint(settings, model))
    prepare_folders(out_dir, jobs)
    report = SegmentReport()
    segmenter = model if isinstance(model, Segmenter) else None
    if segmenter is None and settings.save_maps:  # which maps files to expect
        segmenter = Segmenter.from_settings(settings, model)
    heads = segmenter.map_heads if segmenter is not None else ()
    todo = jobs_to_do(jobs, settings.exports, heads, settings.overwrite)
    report.skipped = len(jobs) - len(todo)
    records = {job.path: record_of(job, out_dir, "skipped") for job in jobs}
    if todo:
        segmenter = segmenter or Segmenter.from_settings(settings, model)
        with tqdm(total=len(jobs), initial=report.skipped, unit="image", desc="segment",
                  disable=None if settings.progress else True) as bar:
            run_jobs(todo, segmenter, report, records, bar)
        report.stage_seconds["network"] = (segmenter.predictor.seconds
                                           + segmenter.probe_predictor.seconds)
    return finish_report(report, out_dir, jobs, records, settings, start)


def run_jobs(jobs: list[Job], segmenter: Segmenter, report: SegmentReport, records: dict,
             bar) -> None:
    """Segment `jobs` (folders prepared, none done) with `segmenter`: counts, failures and
    stage times go to `report`, figures to `records` ({path: ImageRecord}), one `bar`
    (tqdm) step per image. The engine of `segment_paths`, and of each distributed task."""
    clock = _Clock(report.stage_seconds)
    whole, big = split_by_size(jobs, segmenter.settings, segmenter.scale)
    rerouted = _run_whole(whole, segmenter, report, bar, clock, records)
    for job, estimate in [(job, None) for job in big] + rerouted:
        _run_blocks(job, segmenter, report, clock, records, estimate)
        bar.update()


def fail_image(report: SegmentReport, err: Exception, records: dict | None = None,
               job: Job | None = None) -> None:
    """Count `err` (one line naming the file) as a failed image: in `report`, the log and
    the job's record."""
    report.failed.append(str(err))
    log.error("%s", err)
    if records is not None and job is not None:
        records[job.path].status, records[job.path].note = "failed", str(err)


def image_error(job: Job, err: Exception) -> InputError:
    """One line naming the file at fault: the output that could not be written (not its
    temporary name), else the input that could not be read or segmented."""
    if isinstance(err, InputError):
        return err
    if isinstance(err, OSError):
        name = err.filename2 or err.filename
        if name is not None and Path(name) == job.path:
            return InputError(job.path, f"cannot read: {err.strerror or err}")
        output = (temp_target(name) or Path(name)) if name else job.outputs["labels"]
        return InputError(output, f"cannot write the outputs of {job.path.name}: "
                                  f"{err.strerror or err}")
    return InputError(job.path, f"cannot segment the image: {err}")


def _done(job: Job, estimate: SizeEstimate, cells: int, seconds: float, segmenter: Segmenter,
          records: dict) -> None:
    log_done(records[job.path], job, estimate, cells, seconds, segmenter.mode)


def label_metadata(estimate: SizeEstimate, segmenter: Segmenter, job: Job) -> dict:
    """What the labels TIFF records about how it was made (settings: `Job.fingerprint`)."""
    return {"model": str(segmenter.loaded.path.name), "mode": segmenter.mode,
            "settings": job.fingerprint,
            "zoom": round(float(estimate.zoom), 6),
            "diameter_px": None if estimate.diameter is None else round(float(estimate.diameter), 3),
            "size": "auto" if segmenter.scale is None else "fixed",
            "precision": precision_name(segmenter.predictor.dtype)}


def split_by_size(jobs: list[Job], settings: SegmentSettings, zoom: float | None
                  ) -> tuple[list[Job], list[Job]]:
    """(whole-image jobs, block-mode jobs), from the image shape in each file's header at
    `zoom` (the fixed zoom; None: 1)."""
    whole, big = [], []
    for job in jobs:
        shape = image_shape(job.path) if settings.block_mode != "off" else None
        (big if shape is not None and uses_blocks(settings, shape, zoom) else whole).append(job)
    return whole, big


@dataclass
class _Read:
    """An image read for whole-image mode: what finishing it needs besides its maps.

    estimate: its zoom; ready: (maps, labels at the zoom) when the size probes made them;
    big: the zoom takes it past the pixel budget, so it goes to block mode instead."""

    job: Job
    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None
    data: np.ndarray | None  # raw (C, Y, X), all channels, kept for overlay and measurements
    estimate: SizeEstimate
    started: float
    ready: tuple[dict, np.ndarray] | None = None
    big: bool = False


def _load(job: Job, segmenter: Segmenter, clock: _Clock) -> tuple[_Read, np.ndarray | None]:
    """Read an image, find its zoom; (read, model input at the zoom, or None if the size
    probes already segmented it or it goes to block mode)."""
    settings, started = segmenter.settings, time.perf_counter()
    with clock("read"):
        image = read_image(job.path)
        with named_errors(job.path):
            data = (image.data if settings.channel is None
                    else select_channel(image.data, settings.channel))
            settings.measured_channels(image.data.shape[0])  # in range
            x = segmenter.prepare(data, name=job.path)
    with clock("size"):
        try:
            estimate = segmenter.estimate_array(x)
        except ValueError as err:
            raise InputError(job.path, f"cannot estimate the object size: {err}") from err
    check_zoom(job.path, data.shape[1:], estimate.zoom)
    keep = settings.overlay or settings.measure
    read = _Read(job, data.shape[1:], image.pixel_size, image.data if keep else None,
                 estimate, started, estimate.result)
    if read.ready is None and segmenter.scale is None and segmenter.uses_blocks(read.shape,
                                                                                estimate.zoom):
        read.big = True
        return read, None
    return read, (None if read.ready is not None else rescale(x, estimate.zoom))


def _prepared(jobs: list[Job], segmenter: Segmenter, report: SegmentReport, bar, clock,
              records: dict, tiles: "_TileTotal") -> Iterator[tuple[_Read, np.ndarray | None]]:
    """(read, model input) per readable image, read `PREFETCH` images ahead in a thread;
    each image's share of the `tiles` total settled as it is read."""
    with ThreadPoolExecutor(1, thread_name_prefix="read") as pool:
        queue: deque[tuple[Job, Future]] = deque(
            (job, pool.submit(_load, job, segmenter, clock)) for job in jobs[:PREFETCH])
        for nxt in jobs[PREFETCH:] + [None] * PREFETCH:
            if not queue:
                break
            job, future = queue.popleft()
            if nxt is not None:
                queue.append((nxt, pool.submit(_load, nxt, segmenter, clock)))
            try:
                read, x = future.result()
            except InputError as err:
                tiles.settle(job, None)
                fail_image(report, err, records, job)
                bar.update()
                continue
            tiles.settle(job, x)
            if not read.big:
                report.pixels += read.shape[0] * read.shape[1]
            yield read, x


def _run_whole(jobs: list[Job], segmenter: Segmenter, report: SegmentReport, bar, clock,
               records: dict) -> list[tuple[Job, SizeEstimate]]:
    """Predict images in shared batches; decode and write finished ones in worker threads.

    At most `workers` images wait for decoding, and (beyond one) at most `pixel_budget`
    pixels of maps, so memory stays bounded whatever the number of images. Images that
    the size probes already segmented skip the network. Returns the images whose zoom
    takes them to block mode, with their size estimates.
    """
    settings = segmenter.settings
    workers = settings.workers or max(1, min(4, (os.cpu_count() or 2) // 2))
    rerouted: list[tuple[Job, SizeEstimate]] = []
    with _tiles_bar(segmenter, jobs) as tiles, \
            ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[_Read, int, Future]] = deque()

        def submit(read: _Read, maps: dict, labels: np.ndarray | None = None) -> None:
            pixels = int(np.prod(next(iter(maps.values())).shape[1:]))
            pending.append((read, pixels, pool.submit(_finish, read, maps, labels, segmenter,
                                                      clock)))
            while len(pending) > workers or (
                    len(pending) > 1 and sum(p for _, p, _ in pending) > settings.pixel_budget):
                _collect(*pending.popleft(), segmenter, report, bar, records)

        def network_inputs() -> Iterator[tuple[_Read, np.ndarray]]:
            for read, x in _prepared(jobs, segmenter, report, bar, clock, records, tiles):
                if read.big:
                    rerouted.append((read.job, read.estimate))
                elif read.ready is not None:
                    submit(read, *read.ready)
                else:
                    yield read, x

        for read, maps in segmenter.predictor.predict_stream(network_inputs()):
            submit(read, maps)
            del maps
        while pending:
            _collect(*pending.popleft(), segmenter, report, bar, records)
    return rerouted


@contextmanager
def _tiles_bar(segmenter: Segmenter, jobs: list[Job]) -> Iterator["_TileTotal"]:
    """A tqdm bar of the tiles the network predicts for `jobs`, stepped by the predictor
    while open; its total is a `_TileTotal`'s."""
    with tqdm(unit="tile", desc="network", leave=False,
              disable=None if segmenter.settings.progress else True) as bar:
        segmenter.predictor.on_tiles = bar.update
        try:
            yield _TileTotal(bar, segmenter.predictor, jobs, segmenter.scale or 1.0)
        finally:
            segmenter.predictor.on_tiles = None


class _TileTotal:
    """The total of the tiles bar: first the tiles of each image at `zoom` (the fixed zoom,
    or 1 with automatic size), its shape from the file's header (no pixels read; 0 when the
    header does not tell); then, as each image is read, its real share (`settle`)."""

    def __init__(self, bar, predictor, jobs: list[Job], zoom: float):
        self.bar, self.predictor = bar, predictor
        self.planned = {job.path: self._count(image_shape(job.path), zoom) for job in jobs}
        bar.total = sum(self.planned.values())

    def _count(self, shape: tuple[int, int] | None, zoom: float = 1.0) -> int:
        if shape is None:
            return 0
        return len(self.predictor.plan(tuple(max(1, round(n * zoom)) for n in shape)))

    def settle(self, job: Job, x: np.ndarray | None) -> None:
        """`job`'s share becomes the tiles of its model input x (C, y, x), or 0 when the
        network gets none (unreadable, segmented by the size probes, sent to block mode)."""
        change = (0 if x is None else self._count(x.shape[1:])) - self.planned.pop(job.path, 0)
        if change:
            self.bar.total += change
            self.bar.refresh()


def _finish(read: _Read, maps: dict, labels: np.ndarray | None, segmenter: Segmenter,
            clock: _Clock) -> int:
    """Decode (unless `labels` at the zoom are given) and write one image; returns its
    number of cells."""
    with clock("decode"):
        if labels is None:
            labels = segmenter.decode(maps, read.shape)
        else:
            labels = resize_labels(labels, read.shape)
        labels = segmenter.clean(labels)
    with clock("write"):
        _write_outputs(read, maps, labels, segmenter)
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def _write_outputs(read: _Read, maps: dict, labels: np.ndarray, segmenter: Segmenter) -> None:
    """Write the exports asked for, then the labels (last: they mark the image done). When
    one fails, the outputs this call wrote are removed, so no partial set stays."""
    outputs, size, data = read.job.outputs, read.pixel_size, read.data
    settings = segmenter.settings
    segmented = data if settings.channel is None or data is None else data[[settings.channel]]
    measured = None if data is None else settings.measured_channels(len(data))
    writers = {  # each returns the paths it wrote, or None for just its own
        "rois": lambda path: export.write_roi_zip(labels, path),
        "geojson": lambda path: export.write_geojson(labels, path, size),
        "overlay": lambda path: export.write_overlay(segmented, labels, path),
        "measurements": lambda path: export.write_measurements(
            labels, read.data, path, size, channels=measured, image_name=read.job.path.name),
        "maps": lambda path: export.write_maps(maps, path),
        "zarr": lambda path: write_zarr_labels(path, labels, size),
    }
    written: list[Path] = []
    try:
        for name, on in segmenter.settings.exports.items():
            if on:
                made = writers[name](outputs[name])
                written += [outputs[name]] if made is None else made
        write_labels(outputs["labels"], labels, size, label_metadata(read.estimate, segmenter,
                                                                    read.job))
    except BaseException:
        for path in written:
            remove_output(path)
        raise


def _collect(read: _Read, pixels: int, future: Future, segmenter: Segmenter,
             report: SegmentReport, bar, records: dict) -> None:
    try:
        cells = future.result()
    except (OSError, ValueError) as err:  # this image only: the run goes on
        fail_image(report, image_error(read.job, err), records, read.job)
    else:
        report.cells += cells
        report.done += 1
        _done(read.job, read.estimate, cells, time.perf_counter() - read.started, segmenter,
              records)
    bar.update()


def block_mode_exports(job: Job, settings: SegmentSettings) -> dict:
    """{name: path} of the exports asked for `job` that block mode writes
    (`export.BLOCK_EXPORTS`); a warning naming those it does not."""
    asked = [name for name, on in settings.exports.items() if on]
    skipped = [name for name in asked if name not in export.BLOCK_EXPORTS]
    if skipped:
        log.warning("%s: block mode writes no overlay or maps; not written: %s", job.path,
                    ", ".join(skipped))
    return {name: job.outputs[name] for name in asked if name in export.BLOCK_EXPORTS}


def _run_blocks(job: Job, segmenter: Segmenter, report: SegmentReport, clock: _Clock,
                records: dict, estimate: SizeEstimate | None = None) -> None:
    """Segment one big image block by block into a tiled BigTIFF (at the zoom of
    `estimate`, else one estimated from a sample of blocks), with the exports block mode
    writes (`export.BLOCK_EXPORTS`)."""
    started = time.perf_counter()
    try:
        cells, pixels, estimate = segment_file_blocks(
            job.path, job.outputs["labels"], segmenter, clock, estimate,
            lambda e: label_metadata(e, segmenter, job), block_mode_exports(job, segmenter.settings))
    except (OSError, ValueError) as err:  # InputError included; this image only
        fail_image(report, image_error(job, err), records, job)
        return
    report.cells += cells
    report.pixels += pixels
    report.done += 1
    _done(job, estimate, cells, time.perf_counter() - started, segmenter, records)
