"""Read microscopy TIFFs as (C, Y, X) with their pixel size; write label images atomically.

Every problem with an input file is raised as `InputError`, whose message is one line
naming the file. Input files are only ever opened for reading.
"""

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from cellvit_cli import io_formats as formats
from cellvit_cli.preprocess import select_channel
from cellvit_cli.resolution import resolution_options, tiff_pixel_size

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIX = ".zarr"  # a folder: an OME-Zarr image or a zarr array (`zarr_io`)
PNG_SUFFIXES, JPEG_SUFFIXES = (".png",), (".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES + JPEG_SUFFIXES  # what read_image reads
LABEL_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES + (".npy",)  # read_labels; .npy: Cellpose _seg
LABEL_METADATA_KEY = "cellvit"  # where write_labels keeps its metadata in the description
# What reading a damaged file raises: tifffile's own error (a ValueError), short reads
# (ValueError, OSError, EOFError) and imagecodecs' decoder errors (RuntimeError subclasses).
READ_ERRORS = (tifffile.TiffFileError, ValueError, OSError, EOFError, RuntimeError)
_MAX_CHANNELS = 8
_ALPHA_EXTRASAMPLES = (1, 2)  # TIFF ExtraSamples: 1 associated, 2 unassociated alpha
# atomic_path's temporary name ".<stem>.tmp-<8 hex><suffix>", maybe with more after it
_TEMP_NAME = re.compile(r"\.(?P<stem>.+)\.tmp-[0-9a-f]{8}(?P<suffix>\.[^.]*)?(\..+)?")


class InputError(ValueError):
    """A bad input file; str(err) is the one line "<path>: <problem>"."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self):  # pickled as made: a dask task's error reaches the client whole
        return type(self), (self.path, self.problem)


class BinaryMaskError(InputError):
    """A label image that is a binary mask (0/1, several objects), not instance labels."""


@dataclass
class Image:
    """A TIFF image as read.

    data: (C, Y, X) in the file's dtype (a read-only memory map where the file allows);
    axes: the axes tifffile found in the file (e.g. 'YX', 'YXS', 'CYX');
    pixel_size: (y, x) in micrometres, or None when the file does not say.
    """

    path: Path
    data: np.ndarray
    axes: str
    pixel_size: tuple[float, float] | None


def is_zarr(path) -> bool:
    """Whether `path` names a zarr folder (by its name: *.zarr)."""
    return Path(path).suffix.lower() == ZARR_SUFFIX


def read_image(path, channel: int | None = None) -> Image:
    """Read a 2D TIFF, grey or multi-channel, as (C, Y, X); `channel` keeps one (0-based).

    A zarr folder (an OME-Zarr image or a zarr array: `zarr_io`) is read too. PNG and JPEG files (found by their content, not their name) are read too, without a
    pixel size. Alpha samples (RGBA, grey + alpha) are dropped. Raises InputError for a
    missing, unreadable, corrupt or empty file, NaN/inf pixels, non-numeric data, 3D stacks
    and time series, and an out-of-range `channel`.
    """
    path = Path(path)
    if is_zarr(path):
        image = _read_zarr(path)
    else:
        image = _read_file(path)
    if channel is not None:
        with named_errors(path):
            image.data = select_channel(image.data, channel)
    check_pixels(path, image.data)
    return image


def _read_file(path: Path) -> Image:
    """A TIFF, PNG or JPEG file as read, unchecked."""
    _check_file(path)
    if formats.file_format(path) == "tiff":
        image = _read_tiff(path)
    else:
        with named_errors(path):
            image = Image(path, *formats.read_png_jpeg(path), None)
    return image


def _read_zarr(path: Path) -> Image:
    """The image of a zarr folder (`zarr_io.ZarrRegionReader`), read whole, unchecked."""
    from cellvit_cli.zarr_io import ZarrRegionReader

    reader = ZarrRegionReader(path)
    check_pixel_type(path, reader.dtype)
    with named_errors(path):
        data = reader.read(slice(0, reader.shape[1]), slice(0, reader.shape[2]))
    return Image(path, data, "CYX", reader.pixel_size)


def _read_tiff(path: Path) -> Image:
    """The first series of a TIFF as (C, Y, X), alpha samples dropped."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(path, "the TIFF holds no image")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
            pixel_size = tiff_pixel_size(tif)
            alpha = alpha_samples(tif.pages.first)
            raw = _read_pixels(path, tif, series)
    except InputError:
        raise
    except READ_ERRORS as err:
        raise InputError(path, f"cannot read TIFF: {err}") from err
    if raw.size == 0:
        raise InputError(path, f"zero-sized image: shape {raw.shape}")
    check_pixel_type(path, dtype)
    data = _to_cyx(path, raw, shape, axes)
    if alpha and "S" in axes:  # the channel axis is the samples axis
        data = np.delete(data, alpha, axis=0)
    return Image(path, data, axes, pixel_size)


@contextlib.contextmanager
def named_errors(path) -> Iterator[None]:
    """Raise a ValueError of the block (a problem with the file at `path`, one line) as an
    InputError naming `path`; InputErrors pass as they are."""
    try:
        yield
    except InputError:
        raise
    except ValueError as err:
        raise InputError(path, str(err)) from err


def image_shape(path) -> tuple[int, int] | None:
    """(Y, X) of the image of a TIFF from its header, without reading pixels; None when
    the file cannot be read that way (`read_image` then says why). A zarr folder: its
    image's (Y, X)."""
    if is_zarr(path):
        from cellvit_cli.zarr_io import ZarrRegionReader

        try:
            return ZarrRegionReader(path).shape[1:]
        except InputError:
            return None
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


def read_labels(path, label_binary: bool = False) -> np.ndarray:
    """Read an instance label image: (Y, X) int32, or uint32 if values exceed int32.

    TIFF or PNG (a palette PNG gives its indices), or Cellpose's `_seg.npy` (its "masks");
    JPEG is refused (lossy compression changes labels at object borders).

    Raises InputError unless the file holds one channel of non-negative integers, and
    BinaryMaskError for a binary mask (see `looks_binary`) unless `label_binary`, which
    gives each of its 8-connected objects its own label.
    """
    data, axes = _label_pixels(Path(path))
    if data.shape[0] != 1:
        raise InputError(path, f"a label image needs one channel, got shape {data.shape} "
                               f"(C, Y, X) from axes '{axes}'")
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        raise InputError(path, f"labels must be integers, got {data.dtype}")
    labels = np.asarray(data[0], dtype=np.uint8) if data.dtype == bool else data[0]
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise InputError(path, f"labels must be non-negative, found {low}")
    if high > np.iinfo(np.uint32).max:
        raise InputError(path, f"label {high} does not fit in uint32")
    n_objects = looks_binary(labels)
    if n_objects and label_binary:
        return ndi.label(labels, structure=np.ones((3, 3)))[0].astype(np.int32)
    if n_objects:
        raise BinaryMaskError(path, f"looks like a binary mask (only 0 and 1, {n_objects} "
                                    "separate objects), not instance labels: give each object "
                                    "its own id 1..N (e.g. scipy.ndimage.label)")
    dtype = np.int32 if high <= np.iinfo(np.int32).max else np.uint32
    return np.array(labels, dtype=dtype)


def looks_binary(labels: np.ndarray) -> int:
    """The number of 8-connected objects of a (Y, X) image of only 0 and 1 if more than one
    (a binary mask, not instance labels), else 0."""
    if labels.max() != 1:
        return 0
    n_objects = ndi.label(labels > 0, structure=np.ones((3, 3)))[1]
    return n_objects if n_objects > 1 else 0


def _label_pixels(path: Path) -> tuple[np.ndarray, str]:
    """The pixels (C, Y, X) and axes of a label file of any format `read_labels` reads."""
    _check_file(path)
    if path.suffix.lower() == ".npy":
        with named_errors(path):
            return formats.read_seg_npy(path)[np.newaxis], "YX"
    if formats.file_format(path) == "jpeg":
        raise InputError(path, "JPEG is lossy and changes label values at object borders: "
                               "save label images as TIFF or PNG")
    if formats.is_palette_png(path):
        with named_errors(path):
            return formats.read_png_indices(path)[np.newaxis], "YX"
    image = read_image(path)
    return image.data, image.axes


def write_labels(path, labels: np.ndarray, pixel_size: tuple[float, float] | None = None,
                 metadata: dict | None = None) -> None:
    """Write (Y, X) non-negative integer labels as a zlib-compressed TIFF, atomically.

    uint16 when the largest label fits, else uint32. `pixel_size` (y, x) in micrometres
    is stored as resolution tags (plus ImageJ's unit 'um' for uint16), so `read_image`
    gives it back. `metadata` (JSON-able) is stored under the key "cellvit" of the image
    description; `read_label_metadata` gives it back.
    """
    labels = _checked_labels(path, labels)
    dtype = np.uint16 if labels.size == 0 or labels.max() <= 65535 else np.uint32
    options = {"compression": "zlib"}
    imagej = dtype == np.uint16
    if imagej:
        options["imagej"] = True
    if pixel_size is not None:
        options |= resolution_options(pixel_size, imagej=imagej)
    if metadata is not None:
        options["metadata"] = options.get("metadata", {}) | label_description(metadata, imagej)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype, copy=False), **options)


def label_description(metadata: dict, imagej: bool) -> dict:
    """tifffile `metadata` entries that store `metadata` under "cellvit" (ImageJ keeps
    string values only, so there it is a JSON string)."""
    return {LABEL_METADATA_KEY: json.dumps(metadata) if imagej else metadata}


def read_label_metadata(path) -> dict:
    """The "cellvit" metadata of a labels TIFF written by `write_labels` or block mode
    ({} when there is none or the file cannot be read)."""
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.imagej_metadata and LABEL_METADATA_KEY in tif.imagej_metadata:
                found = tif.imagej_metadata[LABEL_METADATA_KEY]
            else:
                found = json.loads(tif.pages.first.description or "{}").get(LABEL_METADATA_KEY)
    except (*READ_ERRORS, AttributeError):
        return {}
    if isinstance(found, str):
        try:
            found = json.loads(found)
        except ValueError:
            return {}
    return found if isinstance(found, dict) else {}


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); rename it onto `path` on success.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def remove_output(path) -> None:
    """Remove an output file, or an output folder (OME-Zarr) with what it holds, if there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def temp_target(path) -> Path | None:
    """The output a temporary file of `atomic_path` (or a file named after one, like block
    mode's `<temp>.uint32.tif`) was to become, or None for any other file. A killed run
    leaves such files behind; the next run removes those of its own outputs."""
    found = _TEMP_NAME.fullmatch(Path(path).name)
    return None if found is None else Path(path).with_name(found["stem"] + (found["suffix"] or ""))


def make_folder(path) -> None:
    """Create the output folder `path` (and its parents); InputError naming it when it is a
    file, lies under one or cannot be created or written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise InputError(path, "is a file, not a folder") from err
    except NotADirectoryError as err:
        under = next((p for p in path.parents if p.is_file()), path.parent)
        raise InputError(path, f"lies under {under}, a file, not a folder") from err
    except OSError as err:
        raise InputError(path, f"cannot create the folder: {err.strerror or err}") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise InputError(path, "cannot write there: the folder is not writable")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, not a TIFF file")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file, not a TIFF")


def _read_pixels(path: Path, tif: tifffile.TiffFile, series) -> np.ndarray:
    """The series' pixels: a read-only memory map when stored uncompressed and contiguous."""
    if series.dataoffset is not None:
        with contextlib.suppress(ValueError, OSError):
            return tifffile.memmap(path, mode="r", series=0)
    return series.asarray()


def check_pixel_type(path, dtype) -> None:
    """InputError naming `path` unless `dtype` is numeric: bool, integer or float."""
    if np.dtype(dtype).kind not in "biuf":
        raise InputError(path, f"unsupported pixel type {np.dtype(dtype)}")


def check_pixels(path, data: np.ndarray, rows: int = 1024) -> None:
    """InputError naming `path` unless `data` (C, Y, X) are numbers and all finite: the one
    pixel check of every way in (whole images here, regions in block mode). Float data are
    checked in row blocks to bound memory."""
    check_pixel_type(path, data.dtype)
    if data.dtype.kind != "f":
        return
    for start in range(0, data.shape[1], rows):
        if not np.isfinite(data[:, start:start + rows]).all():
            raise InputError(path, "image contains NaN or infinite pixels")


def _to_cyx(path: Path, raw: np.ndarray, shape: tuple, axes: str) -> np.ndarray:
    """Move the channel axis first; (Y, X) becomes (1, Y, X)."""
    raw = raw.reshape(shape)
    if raw.ndim == 2:
        return raw[np.newaxis]
    channel_axis = _channel_axis(shape, axes)
    if channel_axis is None:
        raise InputError(path, f"not supported yet: shape {shape} axes '{axes}' "
                               "(3D stacks and time series)")
    return np.moveaxis(raw, channel_axis, 0)


def _channel_axis(shape: tuple, axes: str) -> int | None:
    """Index of the channel axis of a 3D array, or None if it is a stack/time series."""
    if len(shape) != 3 or any(letter in axes for letter in "ZT"):
        return None
    for letter in "SC":
        if letter in axes:
            return axes.index(letter)
    for axis in (0, 2):
        others = [n for i, n in enumerate(shape) if i != axis]
        small = shape[axis] <= 4 or (shape[axis] <= _MAX_CHANNELS
                                     and all(shape[axis] * 4 <= n for n in others))
        if small and shape[axis] <= min(others):
            return axis
    return None


def alpha_samples(page) -> list[int]:
    """Indices of `page`'s alpha samples: extra samples marked alpha (RGBA, grey + alpha),
    or the 4th sample of RGB whose extra sample is unspecified."""
    samples, extras = page.samplesperpixel, [int(e) for e in page.extrasamples or ()]
    first = samples - len(extras)
    alpha = [first + i for i, kind in enumerate(extras) if kind in _ALPHA_EXTRASAMPLES]
    if not alpha and page.photometric == tifffile.PHOTOMETRIC.RGB and samples == 4:
        alpha = [3]
    return alpha


def _checked_labels(path, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"{path}: labels must be a non-empty (Y, X) array, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    if labels.min() < 0 or labels.max() > np.iinfo(np.uint32).max:
        raise ValueError(f"{path}: labels must be in 0..{np.iinfo(np.uint32).max}")
    return labels
