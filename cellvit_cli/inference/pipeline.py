"""The `cellvit segment` engine: TIFF files in, label images (and exports) out.

`segment_paths` runs a folder (or list) of images: a reader thread reads and prepares the
next images while the network predicts the tiles of several images per batch, and decoder
threads decode and write finished images beside it. Images above a pixel budget go through
block mode (`blocks.py`). `segment_array` is the same for one in-memory image.
"""

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from tqdm.auto import tqdm

from cellvit_cli import export
from cellvit_cli.inference.blocks import READ_ERRORS, segment_file_blocks
from cellvit_cli.inference.device import default_batch_size, resolve_device
from cellvit_cli.inference.inputs import Job, find_inputs, plan_jobs
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.io import InputError, read_image, write_labels
from cellvit_cli.preprocess import prepare, resize_labels

log = logging.getLogger(__name__)

PREFETCH = 2                      # images read ahead of the network
BLOCK_MODES = ("auto", "on", "off")


@dataclass
class SegmentSettings:
    """What `segment_paths` and `segment_array` do, besides which images and where to.

    scale: zoom applied to images before the network (None: from `diameter`, else 1);
    diameter: typical cell diameter in the input (px), giving scale = the model's median
    training diameter / diameter. batch_size: tiles per batch (None: 8 on a GPU, 1 on the
    CPU, where ViT-tiny takes ~180 MB per 512 px tile). block_mode: 'auto' (images above
    `pixel_budget` pixels after zoom), 'on' or 'off'. workers: decoding threads (None: half
    the CPU cores, 1 to 4). progress: tqdm bars on stderr (shown on terminals only).
    """

    model: str | os.PathLike | None = None
    mode: str = "auto"
    channel: int | None = None
    diameter: float | None = None
    scale: float | None = None
    batch_size: int | None = None
    device: str = "auto"
    tile_size: int = 512
    overlap: int = 64
    block_mode: str = "auto"
    block_size: int = 1536          # block mode keeps ~2 blocks of maps (~136 B/px) in memory
    pixel_budget: int = 3072 * 3072  # whole-image mode above this is 1.3 GB of maps
    overwrite: bool = False
    roi: bool = False
    geojson: bool = False
    overlay: bool = False
    measure: bool = False
    save_maps: bool = False
    recursive: bool = False
    pattern: str | None = None
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [(self.batch_size is None or self.batch_size >= 1, "batch size must be >= 1"),
                  (self.tile_size >= 16, "tile size must be >= 16"),
                  (0 <= self.overlap < self.tile_size, "overlap must be >= 0 and < tile size"),
                  (self.block_mode in BLOCK_MODES, f"block mode must be one of {BLOCK_MODES}"),
                  (self.block_size >= 256, "block size must be >= 256"),
                  (self.diameter is None or self.diameter > 0, "diameter must be > 0"),
                  (self.scale is None or self.scale > 0, "scale must be > 0"),
                  (self.diameter is None or self.scale is None, "give diameter or scale, not both"),
                  (self.channel is None or self.channel >= 0, "channel must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def exports(self) -> dict[str, bool]:
        """{output name in `export.OUTPUT_SUFFIXES`: asked for} of the optional outputs."""
        return {"rois": self.roi, "geojson": self.geojson, "overlay": self.overlay,
                "measurements": self.measure, "maps": self.save_maps}


@dataclass
class SegmentReport:
    """Outcome of `segment_paths`: counts, failures ("<path>: <problem>"), timings (s)."""

    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    cells: int = 0
    pixels: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.done} image(s) done, {self.skipped} skipped, {len(self.failed)} failed, "
                f"{self.cells:,} cells found in {self.seconds:.1f} s")


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


class Segmenter:
    """A model ready to segment: decoding mode, thresholds, zoom and a `Predictor`."""

    def __init__(self, loaded, settings: SegmentSettings, device=None):
        from cellvit_cli.postprocess import auto_mode, required_heads

        config = loaded.config
        self.loaded, self.settings = loaded, settings
        self.mode = (auto_mode(config.heads, loaded.thresholds) if settings.mode == "auto"
                     else settings.mode)
        self.heads = heads = required_heads(self.mode)
        if not set(heads) <= set(config.heads):
            raise ValueError(f"mode {self.mode!r} needs head(s) {', '.join(heads)}; the model "
                             f"{loaded.path} has {', '.join(config.heads)}")
        self.device = device if device is not None else resolve_device(settings.device)
        network = DenseNetwork(loaded.model.to(self.device).eval(), heads)
        batch_size = settings.batch_size or default_batch_size(self.device)
        self.predictor = Predictor(network, device=self.device, batch_size=batch_size,
                                   tile_size=settings.tile_size, overlap=settings.overlap)
        if settings.scale is not None:
            self.scale = float(settings.scale)
        elif settings.diameter is not None:
            self.scale = config.median_diameter / settings.diameter
        else:
            self.scale = 1.0

    @classmethod
    def from_settings(cls, settings: SegmentSettings, model=None) -> "Segmenter":
        """Load `model` (a LoadedModel, a model folder or shipped name; None: settings.model,
        else the default model) onto the device of `settings`."""
        from cellvit_cli.modeling import LoadedModel, load_model_folder

        device = resolve_device(settings.device)
        if not isinstance(model, LoadedModel):
            model = load_model_folder(model if model is not None else settings.model, device)
        return cls(model, settings, device)

    def prepare(self, data: np.ndarray) -> np.ndarray:
        """Raw (C, Y, X) -> model input float32 (C_model, Y*scale, X*scale)."""
        return prepare(data, self.loaded.config.in_channels, None, self.scale)

    def decode(self, maps: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Labels (int32, `shape`) from maps of the zoomed image."""
        from cellvit_cli.postprocess import decode

        labels = decode(maps, self.mode, self.loaded.thresholds)
        return resize_labels(labels, tuple(shape))

    def uses_blocks(self, shape: tuple[int, int]) -> bool:
        mode = self.settings.block_mode
        if mode != "auto":
            return mode == "on"
        return shape[0] * shape[1] * self.scale ** 2 > self.settings.pixel_budget


def segment_array(image: np.ndarray, model=None, settings: SegmentSettings | None = None
                  ) -> np.ndarray:
    """Segment one image held in memory.

    image: (Y, X) or (C, Y, X), any real dtype; model: a `Segmenter` (built once, reused:
    its settings apply), a `LoadedModel`, a model folder or shipped name (None:
    settings.model, else the default model). Returns
    int32 labels (Y, X), 0 = background. (Whole-image mode: for images that do not fit in
    memory, use `segment_paths`, which switches to block mode.)
    """
    if isinstance(model, Segmenter):
        segmenter, settings = model, settings or model.settings
    else:
        settings = settings or SegmentSettings(progress=False)
        segmenter = Segmenter.from_settings(settings, model)
    data = np.asarray(image)
    data = data[np.newaxis] if data.ndim == 2 else data
    if data.ndim != 3:
        raise ValueError(f"image must be (Y, X) or (C, Y, X), got shape {np.shape(image)}")
    if settings.channel is not None:
        if settings.channel >= data.shape[0]:
            raise ValueError(f"channel {settings.channel} out of range: the image has "
                             f"{data.shape[0]} channel(s)")
        data = data[settings.channel:settings.channel + 1]
    maps = segmenter.predictor.predict(segmenter.prepare(data))
    return segmenter.decode(maps, data.shape[1:])


def segment_paths(inputs, out_dir, settings: SegmentSettings | None = None,
                  model=None) -> SegmentReport:
    """Segment TIFF files, folders or globs into `out_dir`; see `SegmentSettings`.

    Writes OUT/<stem>_labels.tif per image (and the exports asked for); images whose outputs
    all exist are skipped unless `settings.overwrite`. A file that cannot be read is logged
    (one line naming it) and listed in the report's `failed`; the others are still done.
    """
    settings = settings or SegmentSettings()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    jobs = plan_jobs(find_inputs(inputs, settings.recursive, settings.pattern, out_dir), out_dir)
    for job in jobs:
        job.outputs["labels"].parent.mkdir(parents=True, exist_ok=True)
    report = SegmentReport()
    segmenter = model if isinstance(model, Segmenter) else None
    if segmenter is None and settings.save_maps:  # which maps files to expect
        segmenter = Segmenter.from_settings(settings, model)
    heads = segmenter.heads if segmenter is not None else ()
    todo = [job for job in jobs if settings.overwrite or not job.is_done(settings.exports, heads)]
    report.skipped = len(jobs) - len(todo)
    if todo:
        segmenter = segmenter or Segmenter.from_settings(settings, model)
        clock = _Clock(report.stage_seconds)
        whole, big = _split_by_size(todo, segmenter)
        with tqdm(total=len(jobs), initial=report.skipped, unit="image", desc="segment",
                  disable=None if settings.progress else True) as bar:
            _run_whole(whole, segmenter, report, bar, clock)
            for job in big:
                _run_blocks(job, segmenter, report, clock)
                bar.update()
        report.stage_seconds["network"] = segmenter.predictor.seconds
    report.seconds = time.perf_counter() - start
    return report


def _fail(report: SegmentReport, err: Exception) -> None:
    report.failed.append(str(err))
    log.error("%s", err)


def _split_by_size(jobs: list[Job], segmenter: Segmenter) -> tuple[list[Job], list[Job]]:
    """(whole-image jobs, block-mode jobs), from the image shape in each file's header."""
    whole, big = [], []
    for job in jobs:
        shape = _image_shape(job.path) if segmenter.settings.block_mode != "off" else None
        (big if shape is not None and segmenter.uses_blocks(shape) else whole).append(job)
    return whole, big


def _image_shape(path: Path) -> tuple[int, int] | None:
    """(Y, X) from the TIFF header; None if unreadable (read_image will then say why)."""
    tiff_log = logging.getLogger("tifffile")
    level = tiff_log.level
    tiff_log.setLevel(logging.CRITICAL)  # a broken file is reported once, when read
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = tuple(n for n, a in zip(series.shape, series.axes) if a in "YX")
    except (*READ_ERRORS, IndexError):
        return None
    finally:
        tiff_log.setLevel(level)
    return shape if len(shape) == 2 else None


@dataclass
class _Read:
    """An image read for whole-image mode: what finishing it needs besides its maps."""

    job: Job
    shape: tuple[int, int]
    pixel_size: tuple[float, float] | None
    data: np.ndarray | None  # raw (C, Y, X), kept only for the overlay and measurements


def _load(job: Job, segmenter: Segmenter, clock: _Clock) -> tuple[_Read, np.ndarray]:
    settings = segmenter.settings
    with clock("read"):
        image = read_image(job.path, settings.channel)
        try:
            x = segmenter.prepare(image.data)
        except ValueError as err:
            raise InputError(job.path, str(err)) from err
    keep = settings.overlay or settings.measure
    return _Read(job, image.data.shape[1:], image.pixel_size, image.data if keep else None), x


def _prepared(jobs: list[Job], segmenter: Segmenter, report: SegmentReport, bar, clock
              ) -> Iterator[tuple[_Read, np.ndarray]]:
    """(read, model input) per readable image, read `PREFETCH` images ahead in a thread."""
    with ThreadPoolExecutor(1, thread_name_prefix="read") as pool:
        queue: deque[Future] = deque(pool.submit(_load, job, segmenter, clock)
                                     for job in jobs[:PREFETCH])
        for job in jobs[PREFETCH:] + [None] * PREFETCH:
            if not queue:
                break
            future = queue.popleft()
            if job is not None:
                queue.append(pool.submit(_load, job, segmenter, clock))
            try:
                read, x = future.result()
            except InputError as err:
                _fail(report, err)
                bar.update()
                continue
            report.pixels += read.shape[0] * read.shape[1]
            yield read, x


def _run_whole(jobs: list[Job], segmenter: Segmenter, report: SegmentReport, bar, clock) -> None:
    """Predict images in shared batches; decode and write finished ones in worker threads.

    At most `workers` images wait for decoding, and (beyond one) at most `pixel_budget`
    pixels of maps, so memory stays bounded whatever the number of images.
    """
    settings = segmenter.settings
    workers = settings.workers or max(1, min(4, (os.cpu_count() or 2) // 2))
    tiles_bar = tqdm(unit="tile", desc="network", leave=False,
                     disable=None if settings.progress else True)
    segmenter.predictor.on_tiles = tiles_bar.update
    with tiles_bar, ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque[tuple[_Read, int, Future]] = deque()
        stream = segmenter.predictor.predict_stream(_prepared(jobs, segmenter, report, bar, clock))
        for read, maps in stream:
            pixels = int(np.prod(next(iter(maps.values())).shape[1:]))
            pending.append((read, pixels, pool.submit(_finish, read, maps, segmenter, clock)))
            del maps
            while len(pending) > workers or (
                    len(pending) > 1 and sum(p for _, p, _ in pending) > settings.pixel_budget):
                _collect(*pending.popleft(), report, bar)
        while pending:
            _collect(*pending.popleft(), report, bar)
    segmenter.predictor.on_tiles = None


def _finish(read: _Read, maps: dict, segmenter: Segmenter, clock: _Clock) -> int:
    """Decode and write one image; returns its number of cells."""
    with clock("decode"):
        labels = segmenter.decode(maps, read.shape)
    settings, outputs = segmenter.settings, read.job.outputs
    with clock("write"):
        if settings.roi:
            export.write_roi_zip(labels, outputs["rois"])
        if settings.geojson:
            export.write_geojson(labels, outputs["geojson"], read.pixel_size)
        if settings.overlay:
            export.write_overlay(read.data, labels, outputs["overlay"])
        if settings.measure:
            export.write_measurements(labels, read.data, outputs["measurements"], read.pixel_size)
        if settings.save_maps:
            export.write_maps(maps, outputs["maps"])
        write_labels(outputs["labels"], labels, read.pixel_size)  # last: marks the image done
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def _collect(read: _Read, pixels: int, future: Future, report: SegmentReport, bar) -> None:
    try:
        report.cells += future.result()
        report.done += 1
    except OSError as err:
        _fail(report, InputError(read.job.outputs["labels"], f"cannot write: {err}"))
    bar.update()


def _run_blocks(job: Job, segmenter: Segmenter, report: SegmentReport, clock: _Clock) -> None:
    """Segment one big image block by block into a tiled BigTIFF."""
    skipped = [name for name, on in segmenter.settings.exports.items() if on]
    if skipped:
        log.warning("%s: block mode writes labels only; not written: %s", job.path,
                    ", ".join(skipped))
    try:
        cells, pixels = segment_file_blocks(job.path, job.outputs["labels"], segmenter, clock)
    except InputError as err:
        _fail(report, err)
        return
    report.cells += cells
    report.pixels += pixels
    report.done += 1
