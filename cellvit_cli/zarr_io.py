"""OME-Zarr and zarr: images read region by region, labels written chunk by chunk.

Reading: a `.zarr` folder holding an OME-Zarr image (OME-NGFF 0.4 or 0.5 `multiscales`:
its full-resolution level, axes from the metadata, pixel size from its scale in
micrometres) or a plain zarr array ((Y, X), (C, Y, X) or (Y, X, C)). `ZarrRegionReader` has
the interface of `bigtiff.TiffRegionReader`, so `bigtiff.CheckedRegions` checks its pixels.

Writing: `ZarrLabels` writes a labels image as an OME-NGFF 0.4 (zarr v2) image with
`image-label` metadata, one level, chunks of (256, 256), into a hidden folder renamed into
place on success; napari (napari-ome-zarr) and other OME-Zarr readers open it.
"""

import contextlib
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from cellvit_cli.io import READ_ERRORS, InputError, is_zarr

CHUNK = 256
NGFF_VERSION = "0.4"
INSTALL_HINT = "pip install 'cellvit-cli[zarr]'"

__all__ = ["ZarrLabels", "ZarrRegionReader", "is_zarr", "write_zarr_labels"]


def _zarr(path):
    try:
        import zarr
    except ImportError as err:
        raise InputError(path, f"reading or writing zarr needs the zarr package: {INSTALL_HINT}"
                         ) from err
    return zarr


class ZarrRegionReader:
    """Regions of the image in the zarr folder at `path`: shape (C, Y, X), dtype,
    pixel_size (y, x) um or None, read(ys, xs) -> (C, y, x). InputError naming `path` when
    it holds no 2D image (a missing folder, no array, 3D or time axes of more than one
    plane)."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(path, "no such zarr folder")
        zarr = _zarr(path)
        try:
            node = zarr.open(store=str(self.path), mode="r")
        except (*READ_ERRORS, KeyError, TypeError) as err:
            raise InputError(path, f"cannot read zarr: {err}") from err
        self.array, axes, self.pixel_size = _image_array(path, node)
        self.index, self.order = _layout(path, self.array.shape, axes)
        sizes = dict(zip(axes, self.array.shape))
        self.shape = (sizes.get("c", 1), sizes["y"], sizes["x"])
        self.dtype = self.array.dtype

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        """The (C, y, x) region `ys`, `xs` in the array's dtype."""
        index = tuple(ys if a == "y" else xs if a == "x" else i for a, i in self.index)
        data = np.transpose(np.asarray(self.array[index]), self.order)
        return data if data.ndim == 3 else data[None]

    def close(self) -> None:
        """Nothing to close (zarr reads chunk files as needed)."""


def _image_array(path, node):
    """(array, axes as lower-case letters, pixel size) of an OME-Zarr group or array."""
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not hasattr(node, "shape"):  # a group
        if not multiscales:
            raise InputError(path, "zarr group without OME-Zarr multiscales metadata: give "
                                   "the path of its image array")
        first = multiscales[0]
        dataset = first["datasets"][0]
        axes = "".join(_axis_name(a)[0].lower() for a in first.get("axes", "tczyx"[-len(
            node[dataset["path"]].shape):]))
        return node[dataset["path"]], axes, _pixel_size(first, dataset, axes)
    shape = node.shape
    if len(shape) == 2:
        return node, "yx", None
    if len(shape) == 3:
        return node, ("cyx" if shape[0] <= shape[2] else "yxc"), None
    raise InputError(path, f"not supported: a zarr array of shape {shape} (give a 2D image)")


def _axis_name(axis) -> str:
    return axis["name"] if isinstance(axis, dict) else str(axis)


def _pixel_size(multiscale: dict, dataset: dict, axes: str) -> tuple[float, float] | None:
    """(y, x) um of the dataset's scale, when its axes' units are micrometres."""
    units = {_axis_name(a)[0].lower(): a.get("unit") for a in multiscale.get("axes", [])
             if isinstance(a, dict)}
    scale = next((t["scale"] for t in dataset.get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)
    if scale is None or units.get("y") != "micrometer" or units.get("x") != "micrometer":
        return None
    return float(scale[axes.index("y")]), float(scale[axes.index("x")])


def _layout(path, shape: tuple, axes: str) -> tuple[list, tuple]:
    """(per axis (letter, index for the axes other than y/x: 0 or all channels), the
    transpose that brings the result to (C, Y, X)); InputError for z/t of more than one
    plane."""
    if "y" not in axes or "x" not in axes or len(axes) != len(shape):
        raise InputError(path, f"not supported: zarr axes '{axes}' of shape {shape}")
    index = []
    for letter, size in zip(axes, shape):
        if letter in "zt" and size > 1:
            raise InputError(path, f"not supported yet: shape {shape} axes '{axes}' "
                                   "(3D stacks and time series)")
        index.append((letter, slice(None) if letter == "c" else 0 if letter not in "yx" else None))
    kept = [a for a in axes if a in "cyx"]
    order = tuple(kept.index(a) for a in "cyx" if a in kept)
    return index, order


class ZarrLabels:
    """An OME-Zarr labels image of (Y, X) `shape` and `dtype` at `path`, written region by
    region (`write`) into a hidden folder beside it and renamed into place when the `with`
    block ends cleanly (an older one replaced); removed on an error. pixel_size: (y, x) um
    or None. `written`: whether it was renamed into place."""

    def __init__(self, path, shape: tuple[int, int], dtype, pixel_size=None):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.pixel_size, self.written = pixel_size, False
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{secrets.token_hex(4)}")

    def __enter__(self) -> "ZarrLabels":
        zarr = _zarr(self.path)
        root = zarr.open_group(store=str(self._tmp), mode="w", zarr_format=2)
        root.attrs.update(_labels_metadata(self.path.name, self.pixel_size))
        self.array = root.create_array(
            "0", shape=self.shape, chunks=(CHUNK, CHUNK), dtype=self.dtype, fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"})
        return self

    def write(self, y: int, x: int, labels: np.ndarray) -> None:
        """Write (h, w) `labels` at row `y`, column `x`."""
        self.array[y:y + labels.shape[0], x:x + labels.shape[1]] = labels

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        _replace_folder(self._tmp, self.path)
        self.written = True


def _labels_metadata(name: str, pixel_size) -> dict:
    scale = [1.0, 1.0] if pixel_size is None else [float(s) for s in pixel_size]
    axes = [{"name": a, "type": "space"} for a in "yx"]
    if pixel_size is not None:
        axes = [{**a, "unit": "micrometer"} for a in axes]
    return {"multiscales": [{"version": NGFF_VERSION, "name": name, "axes": axes,
                             "datasets": [{"path": "0", "coordinateTransformations": [
                                 {"type": "scale", "scale": scale}]}]}],
            "image-label": {"version": NGFF_VERSION}}


def _replace_folder(tmp: Path, path: Path) -> None:
    """Move the folder `tmp` to `path`; an older `path` is moved aside first, then removed."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        with contextlib.suppress(OSError):
            shutil.rmtree(old)


def write_zarr_labels(path, labels: np.ndarray, pixel_size=None) -> None:
    """Write (Y, X) int `labels` as an OME-Zarr uint32 labels image at `path` (atomic), as
    block mode writes it."""
    with ZarrLabels(path, labels.shape, np.uint32, pixel_size) as out:
        out.write(0, 0, labels.astype(np.uint32, copy=False))
