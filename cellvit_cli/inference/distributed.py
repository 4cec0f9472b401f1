"""`segment_paths` on a dask.distributed cluster: one task per image, run on the workers.

The client plans the run exactly as `segment_paths` does (same inputs, output names,
skip and resume rules), then submits one task per image that is not done. A task runs on
a worker process: it loads the model once per process (cached for the next tasks), runs
the single-process engine (`pipeline.run_jobs`) on its one image, which writes its
outputs atomically to the shared output folder, and returns a small report and its log
lines. Only paths, settings and these small results cross the network, never images.
Tasks are idempotent, so dask can rerun those of a worker that died.

An image that goes to block mode by its size (the shape in its header, at the fixed zoom)
is segmented with its blocks spread over the workers instead (`distributed_blocks`).
"""

import logging
import time
import uuid
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from cellvit_cli.cluster import open_client, parse_cluster
from cellvit_cli.inference.distributed_blocks import segment_image_blocks
from cellvit_cli.inference.fingerprint import run_fingerprint
from cellvit_cli.inference.inputs import Job, find_inputs, jobs_to_do, plan_jobs, prepare_folders
from cellvit_cli.inference.pipeline import (block_mode_exports, fail_image, image_error,
                                            run_jobs, split_by_size)
from cellvit_cli.inference.segmenter import (SegmentSettings, Segmenter, check_thresholds,
                                             fixed_zoom)
from cellvit_cli.inference.summary import SegmentReport, finish_report, log_done, record_of
from cellvit_cli.inference.worker_cache import LOCK, cached_segmenter, captured_logs
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
        whole, huge = _split_by_size(todo, settings, spec)
        with tqdm(total=len(jobs), initial=report.skipped, unit="image", desc="segment",
                  disable=None if settings.progress else True) as bar:
            _run_tasks(client, whole, settings, spec, report, records, bar)
            for job in huge:
                _run_blocks(client, job, settings, spec, report, records)
                bar.update()
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


def _split_by_size(jobs: list[Job], settings: SegmentSettings, model
                   ) -> tuple[list[Job], list[Job]]:
    """(jobs of one task each, jobs whose blocks are spread over the workers): those that
    go to block mode by the shape in their header at the fixed zoom (`split_by_size`). An
    image that only its estimated zoom takes past the pixel budget is done in block mode by
    the one worker of its task."""
    from cellvit_cli.modeling.folder import read_config, resolve_model

    if settings.block_mode == "off":
        return jobs, []
    median = read_config(resolve_model(model if model is not None else settings.model)
                         ).median_diameter
    return split_by_size(jobs, settings, fixed_zoom(settings, median))


def _run_blocks(client, job: Job, settings: SegmentSettings, model, report: SegmentReport,
                records: dict) -> None:
    """Segment one huge image with its blocks spread over the workers
    (`distributed_blocks.segment_image_blocks`); a failure is this image's only."""
    started = time.perf_counter()
    try:
        cells, pixels, plan = segment_image_blocks(client, job, settings, model,
                                                   block_mode_exports(job, settings))
    except (OSError, ValueError) as err:  # InputError included
        fail_image(report, image_error(job, err), records, job)
        return
    report.cells += cells
    report.pixels += pixels
    report.done += 1
    log_done(records[job.path], job, plan.estimate, cells, time.perf_counter() - started,
             plan.mode)


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
    fail_image(report, error, records, job)


# --- on the workers -------------------------------------------------------------------

def segment_job(job: Job, record, settings: SegmentSettings, model=None
                ) -> tuple[SegmentReport, list[tuple[int, str]]]:
    """Segment one image on a worker: (its report, with `record` filled in as its only
    image; the (level, message) lines logged meanwhile). Writes the job's outputs (atomic,
    so a rerun after a lost worker leaves the same files); per-image errors are in the
    report, as in `segment_paths`."""
    with LOCK, captured_logs() as lines:
        segmenter = cached_segmenter(settings, model)
        report, records = SegmentReport(), {job.path: record}
        network = _network_seconds(segmenter)
        start = time.perf_counter()
        with tqdm(disable=True) as bar:
            run_jobs([job], segmenter, report, records, bar)
        report.stage_seconds["network"] = _network_seconds(segmenter) - network
        report.seconds = time.perf_counter() - start
        report.images = [records[job.path]]
    return report, lines


def _network_seconds(segmenter: Segmenter) -> float:
    return segmenter.predictor.seconds + segmenter.probe_predictor.seconds
