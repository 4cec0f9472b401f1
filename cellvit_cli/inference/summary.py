"""What a `segment_paths` run reports: its `SegmentReport`, one `ImageRecord` per input
image, OUT/summary.csv (one row per image) and, with measurements, OUT/cells.csv (the
cells of every image)."""

import csv
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cellvit_cli.inference.inputs import Job
from cellvit_cli.inference.sizing import SizeEstimate
from cellvit_cli.io import atomic_path
from cellvit_cli.settings import SegmentSettings

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.csv"
CELLS_FILE = "cells.csv"


@dataclass
class ImageRecord:
    """What happened to one image: status 'done', 'skipped' or 'failed'; diameter: median
    object diameter (px of the input; '' if not measured), zoom used, cells, seconds from
    reading to the written labels, note (clamping, fallbacks, the error)."""

    image: str
    labels: str
    status: str
    diameter_px: float | str = ""
    zoom: float | str = ""
    cells: int | str = ""
    seconds: float | str = ""
    mode: str = ""
    note: str = ""

    def rounded(self) -> dict:
        row = asdict(self)
        for name, digits in (("diameter_px", 2), ("zoom", 4), ("seconds", 3)):
            if isinstance(row[name], float) and math.isfinite(row[name]):
                row[name] = round(row[name], digits)
        return row


def write_summary(out_dir: Path, records: list[ImageRecord]) -> Path:
    """Write OUT/summary.csv (atomic). Rows of skipped images keep the figures of the run
    that made their outputs, when an earlier summary has them."""
    path = Path(out_dir) / SUMMARY_FILE
    earlier = {row["labels"]: row for row in read_summary(path)}
    rows = []
    for record in records:
        row = record.rounded()
        if record.status == "skipped" and record.labels in earlier:
            row = {**earlier[record.labels], "status": "skipped"}
        rows.append(row)
    names = [f.name for f in fields(ImageRecord)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_cells_table(out_dir: Path, tables: list[Path]) -> Path:
    """Write OUT/cells.csv (atomic): the rows of the per-image measurement CSVs `tables`, in
    that order, under the union of their headers (a column an image lacks is left empty).
    Writes nothing when `tables` is empty; returns the path."""
    path = Path(out_dir) / CELLS_FILE
    if not tables:
        return path
    names: dict[str, None] = {}
    rows: list[dict] = []
    for table in tables:
        with open(table, newline="") as f:
            reader = csv.DictReader(f)
            names.update(dict.fromkeys(reader.fieldnames or []))
            rows.extend(reader)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, list(names), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_summary(path: Path) -> list[dict]:
    """The rows of a summary.csv ([] if there is none or it cannot be read)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


@dataclass
class SegmentReport:
    """Outcome of `segment_paths`: counts, failures ("<path>: <problem>"), timings (s), and
    one `ImageRecord` per input image (also written to OUT/summary.csv)."""

    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    cells: int = 0
    pixels: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    images: list[ImageRecord] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.done} image(s) done, {self.skipped} skipped, {len(self.failed)} failed, "
                f"{self.cells:,} cells found in {self.seconds:.1f} s")


def finish_report(report: SegmentReport, out_dir: Path, jobs: list[Job], records: dict,
                  settings: SegmentSettings, start: float) -> SegmentReport:
    """Close a run: the per-image records in input order, the wall time since `start`,
    OUT/summary.csv and (with --measure) OUT/cells.csv."""
    report.images = [records[job.path] for job in jobs]
    report.seconds = time.perf_counter() - start
    write_report_summary(out_dir, report)
    if settings.measure:
        write_run_cells(out_dir, jobs, records)
    return report


def record_of(job: Job, out_dir: Path, status: str, **figures) -> ImageRecord:
    labels = job.outputs["labels"]
    name = labels.relative_to(out_dir) if labels.is_relative_to(out_dir) else labels
    return ImageRecord(str(job.path), str(name), status, **figures)


def write_report_summary(out_dir: Path, report: SegmentReport) -> None:
    try:
        write_summary(out_dir, report.images)
    except OSError as err:
        log.warning("%s: cannot write the run summary: %s", out_dir, err)


def write_run_cells(out_dir: Path, jobs: list[Job], records: dict) -> None:
    """Write OUT/cells.csv: the rows of the `<stem>_cells.csv` of every job done or skipped
    that has one, in input order (a warning, not an error, when it cannot be written)."""
    tables = [job.outputs["measurements"] for job in jobs
              if records[job.path].status in ("done", "skipped")
              and job.outputs["measurements"].is_file()]
    try:
        write_cells_table(out_dir, tables)
    except (OSError, ValueError, csv.Error) as err:  # a CSV unreadable, or no room
        log.warning("%s: cannot write the run's %s: %s", out_dir, CELLS_FILE, err)


def log_done(record: ImageRecord, job: Job, estimate: SizeEstimate, cells: int,
             seconds: float, mode: str) -> None:
    """Log one line for a finished image and fill its record."""
    log.info("%s: %s, %d cells, %.1f s", job.path.name, estimate.describe(), cells, seconds)
    record.status, record.cells, record.seconds = "done", cells, seconds
    record.diameter_px = "" if estimate.diameter is None else float(estimate.diameter)
    record.zoom, record.mode, record.note = float(estimate.zoom), mode, estimate.note or ""
