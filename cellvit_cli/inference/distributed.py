"""`segment_paths` on a dask.distributed cluster: one task per image, run on the workers.

The client plans the run exactly as `segment_paths` does (same inputs, output names,
skip and resume rules), then submits one task per image that is not done. A task runs on
a worker process: it loads the model once per process (cached for the next tasks), runs
the single-process engine (`pipeline.run_jobs`) on its one image, which writes its
outputs atomically to the shared output folder, and returns a small report and its log
lines. Only paths, settings and these small results cross the network, never images.
Tasks are idempotent, so dask can rerun those of a worker that died.

Huge single images are segmented by the one worker that gets them (block mode within
that worker); splitting one image's blocks over many workers is not done yet.
"""

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from cellvit_cli.cluster import open_client, parse_cluster
from cellvit_cli.inference.fingerprint import run_fingerprint
from cellvit_cli.inference.inputs import Job, find_inputs, jobs_to_do, plan_jobs, prepare_folders
from cellvit_cli.inference.pipeline import SegmentReport, finish_report, record_of, run_jobs
from cellvit_cli.inference.segmenter import SegmentSettings, Segmenter, check_thresholds
from cellvit_cli.io import InputError

log = logging.getLogger(__name__)

__all__ = ["open_client", "parse_cluster", "segment_paths_distributed"]


def segment_paths_distributed(inputs, out_dir, settings: SegmentSettings | None, client,
                              model=None) -> SegmentReport:
    """`segment_paths` with each image segmented by a task on the workers of `client` (a
    dask.distributed Client); same arguments, outputs, OUT/summary.csv and report.

    model: a model folder or shipped name (None: settings.model, else the default model),
    or a LoadedModel / Segmenter, whose folder each worker loads (a Segmenter's settings
    apply). The output folder and the model folder must be visible to every worker under
    the same paths. A task that fails as a whole (its worker lost too often) counts as a
    failed image, named in `report.failed`; the other images are still done.
    """
    settings, spec = _settings_and_model(settings or SegmentSettings(), model)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    found = find_inputs(inputs, settings.recursive, settings.pattern, out_dir)
    jobs = plan_jobs(found, out_dir, run_fingerprint(settings, spec))
    prepare_folders(out_dir, jobs)
    heads = model_heads(settings, spec)
    todo = jobs_to_do(jobs, settings.exports, heads, settings.overwrite)
    report = SegmentReport(skipped=len(jobs) - len(todo))
    records = {job.path: record_of(job, out_dir, "skipped") for job in jobs}
    if todo:
        with tqdm(total=len(jobs), initial=report.skipped, unit="image", desc="segment",
                  disable=None if settings.progress else True) as bar:
            _run_tasks(client, todo, settings, spec, report, records, bar)
        prepare_folders(out_dir, todo)  # temporary files of tasks whose worker died
    return finish_report(report, out_dir, jobs, records, settings, start)


def _settings_and_model(settings: SegmentSettings, model) -> tuple[SegmentSettings, object]:
    """(the settings that apply, what a worker loads: a model folder, name or None)."""
    from cellvit_cli.modeling import LoadedModel

    if isinstance(model, Segmenter):
        return model.settings, model.loaded.path
    if isinstance(model, LoadedModel):
        return settings, model.path
    return settings, model


def model_heads(settings: SegmentSettings, model=None) -> tuple[str, ...]:
    """The heads whose maps a Segmenter of `settings` computes (`Segmenter.map_heads`), read
    from the model folder (`model`, else settings.model) without loading the weights;
    ValueError, as `Segmenter` raises, for a mode or threshold the model cannot use."""
    from cellvit_cli.modeling.folder import read_config, read_thresholds, resolve_model
    from cellvit_cli.postprocess import auto_mode, required_heads

    folder = resolve_model(model if model is not None else settings.model)
    config, thresholds = read_config(folder), read_thresholds(folder)
    mode = auto_mode(config.heads, thresholds) if settings.mode == "auto" else settings.mode
    heads = required_heads(mode)
    if not set(heads) <= set(config.heads):
        raise ValueError(f"mode {mode!r} needs head(s) {', '.join(heads)}; the model "
                         f"{folder} has {', '.join(config.heads)}")
    check_thresholds(settings.threshold_overrides, mode)
    return tuple(config.heads) if settings.save_maps else heads


def _run_tasks(client, jobs: list[Job], settings: SegmentSettings, model,
               report: SegmentReport, records: dict, bar) -> None:
    """Submit one task per job; merge each result into `report` and `records` as it
    finishes, one `bar` step per image."""
    from distributed import as_completed

    quiet = replace(settings, progress=False)  # no progress bars on the workers
    futures = {client.submit(segment_job, job, records[job.path], quiet, model,
                             key=f"cellvit-segment-{uuid.uuid4().hex}"): job for job in jobs}
    for future in as_completed(futures):
        job = futures.pop(future)
        try:
            part, lines = future.result()
        except Exception as err:  # the task is the unit of failure: this image only
            _task_failed(report, records, job, err)
        else:
            _merge(report, records, job, part, lines)
        future.release()
        bar.update()


def _merge(report: SegmentReport, records: dict, job: Job, part: SegmentReport,
           lines: list[tuple[int, str]]) -> None:
    """Add one task's report to the run's, and log the lines it logged on its worker."""
    for level, line in lines:
        log.log(level, "%s", line)
    report.done += part.done
    report.failed += part.failed
    report.cells += part.cells
    report.pixels += part.pixels
    for stage, seconds in part.stage_seconds.items():
        report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + seconds
    records[job.path] = part.images[0]


def _task_failed(report: SegmentReport, records: dict, job: Job, err: Exception) -> None:
    error = InputError(job.path, f"task failed: {type(err).__name__}: {err}")
    report.failed.append(str(error))
    log.error("%s", error)
    records[job.path].status, records[job.path].note = "failed", str(error)


# --- on the workers -------------------------------------------------------------------

_LOCK = threading.Lock()  # one image at a time per process: the engine has its own threads
_SEGMENTERS: dict[tuple[str, str], Segmenter] = {}  # the last model loaded in this process


def segment_job(job: Job, record, settings: SegmentSettings, model=None
                ) -> tuple[SegmentReport, list[tuple[int, str]]]:
    """Segment one image on a worker: (its report, with `record` filled in as its only
    image; the (level, message) lines logged meanwhile). Writes the job's outputs (atomic,
    so a rerun after a lost worker leaves the same files); per-image errors are in the
    report, as in `segment_paths`."""
    with _LOCK, _captured_logs() as lines:
        segmenter = _cached_segmenter(settings, model)
        report, records = SegmentReport(), {job.path: record}
        network = _network_seconds(segmenter)
        start = time.perf_counter()
        with tqdm(disable=True) as bar:
            run_jobs([job], segmenter, report, records, bar)
        report.stage_seconds["network"] = _network_seconds(segmenter) - network
        report.seconds = time.perf_counter() - start
        report.images = [records[job.path]]
    return report, lines


def _cached_segmenter(settings: SegmentSettings, model) -> Segmenter:
    """The Segmenter of (settings, model), loaded once per process and kept for the next
    tasks (only the last one: a new model or settings replace it)."""
    key = (str(model), repr(settings))
    if key not in _SEGMENTERS:
        _SEGMENTERS.clear()
        _SEGMENTERS[key] = Segmenter.from_settings(settings, model)
    return _SEGMENTERS[key]


def _network_seconds(segmenter: Segmenter) -> float:
    return segmenter.predictor.seconds + segmenter.probe_predictor.seconds


class _ListHandler(logging.Handler):
    def __init__(self, lines: list):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


@contextmanager
def _captured_logs() -> Iterator[list[tuple[int, str]]]:
    """The (level, message) lines that cellvit_cli logs (INFO and up) meanwhile, kept from
    the worker's own stderr: the client logs them."""
    logger = logging.getLogger("cellvit_cli")
    lines: list[tuple[int, str]] = []
    handler = _ListHandler(lines)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
