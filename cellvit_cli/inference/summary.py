"""The run summary that `segment_paths` writes: OUT/summary.csv, one row per input image;
with measurements, also OUT/cells.csv, the cells of every image."""

import csv
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cellvit_cli.io import atomic_path

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
