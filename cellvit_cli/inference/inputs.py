"""Which files `cellvit segment` reads, which outputs each one gets, and their folders."""

import fnmatch
import glob
import logging
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import tifffile

from cellvit_cli import export
from cellvit_cli.inference.fingerprint import changed_settings
from cellvit_cli.io import (READ_ERRORS, TIFF_SUFFIXES, ZARR_SUFFIX, is_zarr, make_folder,
                            read_label_metadata, remove_output, temp_target)

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One input image and where its outputs go: {name: path}, names and file name
    endings from `export.OUTPUT_SUFFIXES` ("labels", "rois", ...); fingerprint: what
    decides its labels in this run (`fingerprint.settings_fingerprint`), stored with them."""

    path: Path
    outputs: dict[str, Path]
    fingerprint: dict | None = None

    def is_done(self, exports: dict[str, bool], heads=()) -> bool:
        """Whether the outputs are complete (`outputs_exist`) and made with the settings of
        this run (`changed_settings`)."""
        return self.outputs_exist(exports, heads) and not self.changed_settings()

    def outputs_exist(self, exports: dict[str, bool], heads=()) -> bool:
        """Whether the labels are complete (see `labels_layout`) and every export asked for
        exists (maps: of `heads`). Labels from block mode (a tiled BigTIFF) need only the
        exports block mode writes (`export.BLOCK_EXPORTS`)."""
        layout = labels_layout(self.outputs["labels"])
        wanted = []
        for name, on in exports.items():
            if not on or (layout == "tiled" and name not in export.BLOCK_EXPORTS):
                continue
            if name == "maps":
                wanted += [export.maps_path(self.outputs["maps"], head) for head in heads]
            else:
                wanted.append(self.outputs[name])
        return layout in ("tiled", "plain") and all(p.exists() for p in wanted)

    def changed_settings(self) -> list[str]:
        """Names of the settings in which the labels' stored fingerprint differs from this
        run's ([] when either has none: labels of older versions count as done)."""
        if self.fingerprint is None:
            return []
        stored = read_label_metadata(self.outputs["labels"]).get("settings")
        return [] if not isinstance(stored, dict) else changed_settings(stored, self.fingerprint)


def jobs_to_do(jobs: list[Job], exports: dict[str, bool], heads=(), overwrite=False
               ) -> list[Job]:
    """The jobs that are not done (all with `overwrite`); one info line per image redone
    because its settings changed."""
    todo = []
    for job in jobs:
        if overwrite or not job.outputs_exist(exports, heads):
            todo.append(job)
        elif changed := job.changed_settings():
            log.info("%s: settings changed (%s): redoing", job.path.name, ", ".join(changed))
            todo.append(job)
    return todo


def labels_layout(path: Path) -> str | None:
    """'tiled' (block mode's BigTIFF), 'plain', or None when the labels file is missing,
    empty, unreadable or truncated (its first page's data must lie inside the file). Reads
    tags only, never pixels."""
    try:
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            counts = np.asarray(page.databytecounts)
            ends = np.add(page.dataoffsets, counts)
            complete = (0 not in page.shape and counts.size > 0 and counts.min() > 0
                        and int(ends.max()) <= size)
            tiled = tif.is_bigtiff and page.is_tiled
    except READ_ERRORS:  # OSError covers a missing file
        return None
    return None if not complete else "tiled" if tiled else "plain"


def find_inputs(inputs, recursive: bool = False, pattern: str | None = None,
                exclude: Path | None = None) -> list[tuple[Path, PurePath]]:
    """(file, output name) for each input image, output names relative to the output folder.

    inputs: files (taken as given), folders (their *.tif/*.tiff files and *.zarr folders, or
    those matching `pattern`; subfolders too if `recursive`; hidden files skipped) and globs
    (`**` matches any depth, with or without `recursive`). Sub-folders are mirrored in the output names: relative to
    the folder, or to a glob's fixed part (before its first wildcard). Our own outputs in
    `exclude` (the output folder) are never taken from folders or globs. Raises ValueError
    when a path is missing, nothing is found, or two inputs would write the same outputs.
    """
    found: dict[Path, PurePath] = {}
    for item in inputs:
        for path, name in _pick(Path(item), recursive, pattern, exclude):
            found.setdefault(path.resolve(), name.with_name(_stem(name.name)))
    if not found:
        raise ValueError(f"no TIFF files found in {', '.join(map(str, inputs))}")
    names: dict[PurePath, Path] = {}
    for path, name in found.items():
        if name in names:
            raise ValueError(f"{names[name]} and {path} would write the same outputs "
                             f"({name}_labels.tif): segment them into different folders")
        names[name] = path
    return list(found.items())


def _pick(item: Path, recursive: bool, pattern: str | None, exclude: Path | None
          ) -> list[tuple[Path, PurePath]]:
    """(file, name relative to the output folder) of one input: a folder, file or glob."""
    if item.is_dir() and not is_zarr(item):
        files = item.rglob("*") if recursive else item.iterdir()
        return [(f, f.relative_to(item)) for f in sorted(files) if _an_image(f, item)
                and not _hidden(f.relative_to(item)) and _wanted(f, pattern, exclude)]
    if item.exists():
        return [(item, PurePath(item.name))]
    if not glob.has_magic(str(item)):
        raise ValueError(f"{item}: no such file or folder")
    root = glob_root(str(item))
    matches = sorted(Path(m) for m in glob.glob(str(item), recursive="**" in str(item)))
    picked = [(f, f.relative_to(root)) for f in matches
              if _an_image(f, root) and _wanted(f, pattern, exclude, check_suffix=False)]
    if not picked:
        raise ValueError(f"{item}: no files match")
    return picked


def glob_root(pattern: str) -> Path:
    """The fixed part of a glob, before its first wildcard: 'plates/**/*.tif' -> plates."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:fixed]) if fixed else Path(".")


def _an_image(path: Path, root: Path) -> bool:
    """Whether `path`, found under `root`, can be an input: a file, or a zarr folder (but
    nothing inside one)."""
    inside = path.relative_to(root).parts[:-1]
    if any(is_zarr(part) for part in inside):
        return False
    return path.is_file() or (is_zarr(path) and path.is_dir())


def _wanted(path: Path, pattern: str | None, exclude: Path | None, check_suffix=True) -> bool:
    if exclude is not None and _is_output(path, exclude):
        return False
    if pattern is not None:
        return fnmatch.fnmatch(path.name, pattern)
    return not check_suffix or path.suffix.lower() in (*TIFF_SUFFIXES, ZARR_SUFFIX)


def _hidden(relative: PurePath) -> bool:
    """Whether a file found in a folder is hidden (or in a hidden subfolder): our own temp
    files (`.name.tmp-*.tif`), macOS `._name.tif`, `.git/`..."""
    return any(part.startswith(".") for part in relative.parts)


def _is_output(path: Path, out_dir: Path) -> bool:
    """Whether `path` is one of our outputs inside `out_dir` (e.g. a labels file)."""
    if not path.resolve().is_relative_to(out_dir.resolve()):
        return False
    name = path.name.lower()
    return (any(name.endswith(suffix) for suffix in export.OUTPUT_SUFFIXES.values())
            or fnmatch.fnmatch(name, "*_maps_*.tif"))


def _stem(name: str) -> str:
    """img.tif -> img, img.ome.tiff -> img, img.ome.zarr -> img."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


def plan_jobs(inputs: list[tuple[Path, PurePath]], out_dir: Path,
              fingerprint: dict | None = None) -> list[Job]:
    """A Job per (file, output name), made with `fingerprint`; ValueError if an output
    would overwrite an input."""
    sources = {path for path, _ in inputs}
    jobs = []
    for path, name in inputs:
        outputs = {key: out_dir / name.parent / f"{name.name}{suffix}"
                   for key, suffix in export.OUTPUT_SUFFIXES.items()}
        clash = [p for p in outputs.values() if p.resolve() in sources]
        if clash:
            raise ValueError(f"{clash[0]}: an output would overwrite an input")
        jobs.append(Job(path, outputs, fingerprint))
    return jobs


def prepare_folders(out_dir: Path, jobs: list[Job]) -> None:
    """Create the output folders (InputError naming one that cannot be) and remove what a
    killed run left of these outputs: `io.atomic_path` temporary files. (A run writing the
    same outputs at the same time would lose its own: that would be a clash anyway.)"""
    planned = {path for job in jobs for path in job.outputs.values()}
    make_folder(out_dir)
    for folder in sorted({path.parent for path in planned}):
        make_folder(folder)
        for path in folder.glob(".*.tmp-*"):
            if _is_planned(temp_target(path), planned):
                remove_output(path)


def _is_planned(target: Path | None, planned: set[Path]) -> bool:
    """Whether `target` is a planned output, or a head's file of a planned maps output."""
    if target is None:
        return False
    stem, _, head = target.stem.rpartition("_maps_")
    return target in planned or bool(stem and head
                                     and target.with_name(f"{stem}_maps.tif") in planned)
