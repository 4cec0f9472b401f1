"""Per-image outputs beside the labels: ImageJ ROI zip, GeoJSON, outline overlay, measurements.

Polygon coordinates are in pixel-edge units, the convention of both ImageJ and QuPath: pixel
(y, x) covers [x, x + 1) x [y, y + 1), so its centre is at (x + 0.5, y + 0.5). Each outline is
the marching-squares contour (level 0.5) of the object's mask, so it passes half-way between
the object's boundary pixels and their outside neighbours: every object pixel centre lies
inside it, every other pixel centre outside (up to diagonal-only touches and holes).

The ROI zip, GeoJSON and measurements are written in parts: a writer (`RoiZipWriter`,
`GeoJsonWriter`, `MeasurementsWriter`) takes one `Cells` set at a time (the whole image, or
the cells one block of block mode owns) and renames its file into place when closed
without error. `write_roi_zip`, `write_geojson` and `write_measurements` are the one-set case.
"""

import contextlib
import csv
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import roifile
import tifffile
from PIL import Image as PILImage
from scipy import ndimage as ndi
from skimage import measure as skmeasure
from skimage.segmentation import find_boundaries

from .io import atomic_path
from .preprocess import normalize_percentile
from .registry import HEADS, head_spec

# File name endings of the per-image outputs: OUT/<image stem><suffix> (docs/outputs.md).
OUTPUT_SUFFIXES = {
    "labels": "_labels.tif",
    "rois": "_rois.zip",
    "geojson": ".geojson",
    "overlay": "_overlay.png",
    "measurements": "_cells.csv",
    "maps": "_maps.tif",  # write_maps turns it into _maps_<head>.tif
    "zarr": "_labels.ome.zarr",  # a folder: the labels again, as OME-Zarr (`zarr_io`)
}
BLOCK_EXPORTS = ("rois", "geojson", "measurements", "zarr")  # block mode writes these too
SHAPE_PROPERTIES = ("eccentricity", "solidity", "perimeter", "axis_major_length",
                    "axis_minor_length", "orientation", "equivalent_diameter_area")
SHAPE_NAMES = {"equivalent_diameter_area": "equivalent_diameter"}  # regionprops -> ours


# ---- outlines -------------------------------------------------------------------------------

def iter_outlines(labels: np.ndarray, offset: tuple[int, int] = (0, 0)
                  ) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (label, xy) per object: xy float64 (N, 2) closed ring, pixel-edge x then y.

    labels: (Y, X) int whose pixel (0, 0) is pixel `offset` (y, x) of the image the
    coordinates refer to. The ring is the longest contour of the object (its outer boundary;
    holes and detached fragments are dropped); the first point is repeated at the end.
    """
    for index, slices in enumerate(ndi.find_objects(labels)):
        if slices is None:
            continue
        label = index + 1
        mask = np.pad(labels[slices] == label, 1)
        contours = skmeasure.find_contours(mask.astype(np.uint8), 0.5, fully_connected="high")
        ring = _drop_collinear(max(contours, key=len))
        shift = np.array([slices[0].start, slices[1].start]) + np.asarray(offset) - 1 + 0.5
        yield label, (ring + shift)[:, ::-1]


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Closed ring (N, 2) without the vertices where the direction does not change."""
    step = np.diff(ring, axis=0)                      # step k: vertex k -> k + 1
    turn = np.any(step != np.roll(step, 1, axis=0), axis=1)  # vertex k: step k-1 vs step k
    kept = ring[:-1][turn]
    return np.concatenate([kept, kept[:1]])


def _signed_area(xy: np.ndarray) -> float:
    """Shoelace area of a closed ring (N, 2); positive when counter-clockwise in (x, y)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _cell_name(label: int) -> str:
    return f"cell_{label:04d}"


@dataclass(frozen=True)
class Cells:
    """A set of final cells, as the exports take them: those of a whole image, or of a region.

    labels: (y, x) int, 0 background; offset: (y0, x0), where pixel (0, 0) of `labels` lies
    in the image; label_offset: added to each label to give the cell's id in the image;
    image: the raw (C, y, x) intensities of the same region, or None.
    """

    labels: np.ndarray
    offset: tuple[int, int] = (0, 0)
    label_offset: int = 0
    image: np.ndarray | None = None

    def outlines(self) -> Iterator[tuple[int, np.ndarray]]:
        """(cell id, xy ring in the image's coordinates) per cell, as `iter_outlines`."""
        for label, xy in iter_outlines(self.labels, self.offset):
            yield label + self.label_offset, xy


class _PartsFile:
    """A file written in parts: `add(cells)` per cell set (at least once), renamed onto
    `path` on leaving the `with` block without error (then `written`), removed on an error
    (`atomic_path`)."""

    def __init__(self, path):
        self.path = Path(path)
        self.written = False  # True once renamed onto `path`

    def __enter__(self):
        with contextlib.ExitStack() as stack:
            self._open(stack, stack.enter_context(atomic_path(self.path)))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            try:
                self._finish()
            except BaseException as err:
                self._stack.__exit__(type(err), err, err.__traceback__)
                raise
        self._stack.__exit__(kind, error, traceback)
        self.written = kind is None

    def _open(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """What closes the file's content (nothing by default)."""

    def add(self, cells: Cells) -> None:
        raise NotImplementedError


# ---- ImageJ ROI zip ---------------------------------------------------------------------------

class RoiZipWriter(_PartsFile):
    """A zip of ImageJ polygon ROIs for Fiji, one per cell, named cell_0001, ... by cell id."""

    def _open(self, stack, tmp) -> None:
        self._zip = stack.enter_context(zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED))

    def add(self, cells: Cells) -> None:
        for label, xy in cells.outlines():
            roi = roifile.ImagejRoi.frompoints(xy[:-1], name=_cell_name(label))
            roi.roitype = roifile.ROI_TYPE.POLYGON
            self._zip.writestr(f"{roi.name}.roi", roi.tobytes())


def write_roi_zip(labels: np.ndarray, path) -> None:
    """Write one ImageJ polygon ROI per object (named cell_0001, ...) into a zip for Fiji.

    labels: (Y, X) int. Empty labels give an empty zip.
    """
    with RoiZipWriter(path) as writer:
        writer.add(Cells(labels))


# ---- GeoJSON ----------------------------------------------------------------------------------

class GeoJsonWriter(_PartsFile):
    """A GeoJSON FeatureCollection, one Polygon per cell, as QuPath imports it (see
    `write_geojson` for the properties)."""

    def __init__(self, path, pixel_size=None, object_type: str = "detection",
                 classification: str | None = None):
        super().__init__(path)
        self.pixel_size, self.object_type = pixel_size, object_type
        self.classification = classification

    def _open(self, stack, tmp) -> None:
        self._file = stack.enter_context(open(tmp, "w"))
        self._file.write('{"type":"FeatureCollection","features":[')
        self._separator = ""

    def add(self, cells: Cells) -> None:
        areas = np.bincount(cells.labels.ravel()) if cells.labels.size else np.zeros(1, np.int64)
        for label, xy in cells.outlines():
            area = int(areas[label - cells.label_offset])
            feature = _feature(label, xy, area, self.pixel_size, self.object_type,
                               self.classification)
            self._file.write(self._separator + json.dumps(feature, separators=(",", ":")))
            self._separator = ","

    def _finish(self) -> None:
        self._file.write("]}")


def write_geojson(labels: np.ndarray, path, pixel_size=None, object_type: str = "detection",
                  classification: str | None = None) -> None:
    """Write a GeoJSON FeatureCollection, one Polygon per object, as QuPath imports it.

    labels: (Y, X) int. Coordinates are pixels (x, y), exterior rings closed and
    counter-clockwise. Properties: objectType ("detection" or "annotation"), name, label,
    area (pixels), area_um2 when pixel_size (um, y then x) is given, and classification
    ({"name": ...}) when given.
    """
    with GeoJsonWriter(path, pixel_size, object_type, classification) as writer:
        writer.add(Cells(labels))


def _feature(label, xy, area, pixel_size, object_type, classification) -> dict:
    if _signed_area(xy) < 0:
        xy = xy[::-1]
    properties = {"objectType": object_type, "name": _cell_name(label), "label": label,
                  "area": area}
    if pixel_size is not None:
        properties["area_um2"] = area * float(pixel_size[0]) * float(pixel_size[1])
    if classification is not None:
        properties["classification"] = {"name": classification}
    ring = np.round(xy, 2).tolist()
    return {"type": "Feature", "id": _cell_name(label),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": properties}


# ---- overlay PNG ------------------------------------------------------------------------------

def write_overlay(image: np.ndarray, labels: np.ndarray, path) -> None:
    """Write an RGB uint8 PNG of the image with each object's outline in its own colour.

    image: (Y, X) or (C, Y, X) any real dtype, percentile-normalised per channel; one channel
    is shown grey, two as red/green, three or more as RGB of the first three.
    labels: (Y, X) int, same Y, X. Outline pixels are the objects' inner boundary pixels.
    """
    rgb = overlay_rgb(image, labels)
    with atomic_path(path) as tmp:
        PILImage.fromarray(rgb).save(tmp, format="PNG", compress_level=1)


def overlay_rgb(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The overlay of `write_overlay` as a (Y, X, 3) uint8 array."""
    rgb = _image_to_rgb(image)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and labels {labels.shape} differ in shape")
    outline = find_boundaries(labels, mode="inner")
    rgb[outline] = label_colours(labels[outline])
    return rgb


def _image_to_rgb(image: np.ndarray) -> np.ndarray:
    """(Y, X) or (C, Y, X) -> (Y, X, 3) uint8, percentile-normalised and clipped."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    grey = np.clip(normalize_percentile(image[:3]), 0, 1)
    grey = (grey * 255 + 0.5).astype(np.uint8)
    if len(grey) == 1:
        return np.repeat(grey[0][..., None], 3, axis=-1)
    rgb = np.zeros(grey.shape[1:] + (3,), np.uint8)
    rgb[..., : len(grey)] = np.moveaxis(grey, 0, -1)
    return rgb


def label_colours(values: np.ndarray) -> np.ndarray:
    """Saturated colours (N, 3) uint8 for label values (N,), stable per label (golden-ratio hues)."""
    hue = (np.asarray(values, np.float64) * 0.618033988749895) % 1.0
    sector = hue * 6.0
    # Full-saturation, full-value HSV -> RGB: each channel is a clipped triangle wave in hue.
    channels = [np.clip(np.abs((sector + shift) % 6.0 - 3.0) - 1.0, 0.0, 1.0)
                for shift in (0.0, 4.0, 2.0)]
    return (np.stack(channels, axis=-1) * 255 + 0.5).astype(np.uint8)


# ---- measurements CSV -------------------------------------------------------------------------

def measure(labels: np.ndarray, image: np.ndarray | None = None, pixel_size=None,
            shape_features: bool = True, channels=None, image_name: str | None = None
            ) -> dict[str, np.ndarray]:
    """Per-object measurements as columns of equal length (one row per object, by label).

    labels: (Y, X) int; image: (Y, X) or (C, Y, X) raw intensities, or None; channels:
    the indices of `image`'s channels to measure (None: all). Columns: image (the name,
    when `image_name` is given), label, centroid_y, centroid_x, area (pixels), bbox_y0,
    bbox_x0, bbox_y1, bbox_x1 (end exclusive); per measured channel k (its index in
    `image`): mean_intensity_c<k>, min_intensity_c<k>, max_intensity_c<k>,
    integrated_intensity_c<k> (sum over the object); when `shape_features`: eccentricity,
    solidity, perimeter, axis_major_length, axis_minor_length (pixels), orientation
    (radians, skimage's convention), equivalent_diameter (pixels, of the circle of the
    same area); area_um2 (and perimeter_um) when pixel_size (um, y then x) is given.
    """
    return measure_cells(Cells(labels, image=image), pixel_size, shape_features, channels,
                         image_name)


def measure_cells(cells: Cells, pixel_size=None, shape_features: bool = True, channels=None,
                  image_name: str | None = None) -> dict[str, np.ndarray]:
    """The columns of `measure` for a `Cells` set: labels are cell ids, centroids and boxes
    are in the image's coordinates (`cells.offset` and `label_offset` added)."""
    labels = cells.labels
    image = None if cells.image is None else _as_cyx(cells.image)
    channels = [] if image is None else list(range(len(image)) if channels is None else channels)
    properties = ["label", "centroid", "area", "bbox"]
    properties += list(SHAPE_PROPERTIES) if shape_features else []
    table = skmeasure.regionprops_table(labels, properties=properties)
    columns = _placed(_rename(table), cells)
    for c in channels:
        columns |= _intensity_columns(labels, image[c], c)
    columns |= {SHAPE_NAMES.get(p, p): np.asarray(table[p]) for p in SHAPE_PROPERTIES
                if p in table}
    if pixel_size is not None:
        py, px = (float(s) for s in pixel_size)
        columns["area_um2"] = columns["area"] * py * px
        if "perimeter" in columns:
            columns["perimeter_um"] = columns["perimeter"] * np.sqrt(py * px)
    if image_name is not None:
        columns = {"image": np.full(len(columns["label"]), image_name, object), **columns}
    return columns


def _placed(columns: dict[str, np.ndarray], cells: Cells) -> dict[str, np.ndarray]:
    """Label, centroid and box columns moved from `cells.labels` into the image."""
    if cells.offset == (0, 0) and cells.label_offset == 0:
        return columns
    y0, x0 = cells.offset
    shifts = {"label": cells.label_offset, "centroid_y": y0, "centroid_x": x0,
              "bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y0, "bbox_x1": x0}
    return {name: values + shifts.get(name, 0) for name, values in columns.items()}


def _as_cyx(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return image[None] if image.ndim == 2 else image


def _rename(table: dict) -> dict[str, np.ndarray]:
    """regionprops_table names of the label and box columns -> ours, in a fixed order."""
    names = {"label": "label", "centroid-0": "centroid_y", "centroid-1": "centroid_x",
             "area": "area", "bbox-0": "bbox_y0", "bbox-1": "bbox_x0",
             "bbox-2": "bbox_y1", "bbox-3": "bbox_x1"}
    columns = {ours: np.asarray(table[theirs]) for theirs, ours in names.items()}
    columns["area"] = columns["area"].astype(np.int64)
    return columns


def _intensity_columns(labels: np.ndarray, channel: np.ndarray, index: int
                       ) -> dict[str, np.ndarray]:
    """mean/min/max/integrated intensity of each object in one (Y, X) channel, named by
    the channel's `index`."""
    table = skmeasure.regionprops_table(labels, intensity_image=channel,
                                        properties=["area", "intensity_mean", "intensity_min",
                                                    "intensity_max"])
    mean = np.asarray(table["intensity_mean"], np.float64)
    return {f"mean_intensity_c{index}": mean,
            f"min_intensity_c{index}": np.asarray(table["intensity_min"]),
            f"max_intensity_c{index}": np.asarray(table["intensity_max"]),
            f"integrated_intensity_c{index}": mean * np.asarray(table["area"])}


class MeasurementsWriter(_PartsFile):
    """A CSV of `measure_cells` rows, one per cell, under one header row (see `measure`)."""

    def __init__(self, path, pixel_size=None, shape_features: bool = True, channels=None,
                 image_name: str | None = None):
        super().__init__(path)
        self.options = {"pixel_size": pixel_size, "shape_features": shape_features,
                        "channels": channels, "image_name": image_name}

    def _open(self, stack, tmp) -> None:
        self._writer = csv.writer(stack.enter_context(open(tmp, "w", newline="")))
        self._header: list[str] | None = None

    def add(self, cells: Cells) -> None:
        columns = measure_cells(cells, **self.options)
        if self._header is None:
            self._header = list(columns)
            self._writer.writerow(self._header)
        elif list(columns) != self._header:
            raise ValueError(f"cells measured as {list(columns)}, not {self._header}")
        for row in zip(*columns.values()):
            self._writer.writerow(_format(v) for v in row)


def write_measurements(labels: np.ndarray, image: np.ndarray | None, path, pixel_size=None,
                       shape_features: bool = True, channels=None,
                       image_name: str | None = None) -> None:
    """Write `measure(...)` as a CSV with a header row; empty labels give the header only."""
    with MeasurementsWriter(path, pixel_size, shape_features, channels, image_name) as writer:
        writer.add(Cells(labels, image=image))


def _format(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (np.integer, int)):
        return str(int(value))
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


# ---- dense maps -------------------------------------------------------------------------------

def map_channel_names(head: str, n_channels: int) -> list[str]:
    """Channel names of a head's map (its registry entry's), e.g. star: prob, dist_0, ...;
    <head>_0, <head>_1, ... for a head or a channel count the registry does not know."""
    if head in HEADS:
        spec = head_spec(head)
        names = spec.channel_names(n_channels - len(spec.fixed_channels))
        if len(names) == n_channels:
            return names
    return [f"{head}_{k}" for k in range(n_channels)]


def maps_path(path, head: str) -> Path:
    """Where `write_maps(maps, path)` puts `head`: <path without .tif>_<head>.tif."""
    path = Path(path)
    stem = path.name[:-4] if path.name.lower().endswith(".tif") else path.name
    return path.with_name(f"{stem}_{head}.tif")


def write_maps(maps: dict[str, np.ndarray], path) -> list[Path]:
    """Write each head's dense map as its own float32 ImageJ hyperstack TIFF (axes CYX).

    maps: {head: float32 (C, Y, X)}; path: e.g. OUT/img_maps.tif, giving OUT/img_maps_star.tif,
    ... (see `maps_path`). Channel names are stored as ImageJ slice labels. Returns the paths.
    All or nothing: when one fails, those already written are removed.
    """
    written = []
    try:
        for head, data in maps.items():
            data = np.asarray(data, dtype=np.float32)
            target = maps_path(path, head)
            with atomic_path(target) as tmp:
                _write_float_stack(tmp, data, map_channel_names(head, data.shape[0]))
            written.append(target)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        raise
    return written


def _write_float_stack(path, data: np.ndarray, names: list[str]) -> None:
    """float32 (C, Y, X) -> ImageJ hyperstack TIFF; plain BigTIFF beyond ImageJ's 4 GB."""
    if data.nbytes < 2**32 - 2**25:
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX", "Labels": names})
    else:
        tifffile.imwrite(path, data, bigtiff=True, metadata={"axes": "CYX", "channels": names})
