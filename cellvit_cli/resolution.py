"""Pixel size, the one way an image's resolution is carried: (y, x) in micrometres, or
None when unknown. Read from a TIFF's metadata; written back as tifffile options."""

import xml.etree.ElementTree as ElementTree

import numpy as np
import tifffile

_UNIT_TO_UM = {
    "um": 1.0, "\u00b5m": 1.0, "\u03bcm": 1.0, "\\u00b5m": 1.0, "micron": 1.0,
    "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0, "nm": 1e-3, "mm": 1e3,
    "cm": 1e4, "m": 1e6, "\u00c5": 1e-4, "angstrom": 1e-4,
}
_RESUNIT_TO_UM = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_MAX_INCH_PIXEL_UM = 25.0  # coarser "dpi" pixel sizes are display defaults (72 dpi), not optics


def tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    """(y, x) in um from OME-XML, else ImageJ unit + resolution, else resolution tags."""
    page = tif.pages.first
    if tif.is_ome and tif.ome_metadata:
        size = _ome_pixel_size(tif.ome_metadata)
        if size is not None:
            return size
    if tif.is_imagej and tif.imagej_metadata:
        unit = str(tif.imagej_metadata.get("unit", "")).strip().lower()
        if unit in _UNIT_TO_UM:
            return _resolution_pixel_size(page, _UNIT_TO_UM[unit])
    resunit = int(page.tags.valueof("ResolutionUnit", 1))
    if resunit not in _RESUNIT_TO_UM:
        return None
    size = _resolution_pixel_size(page, _RESUNIT_TO_UM[resunit])
    if size is not None and resunit == 2 and max(size) > _MAX_INCH_PIXEL_UM:
        return None
    return size


def _resolution_pixel_size(page, unit_um: float) -> tuple[float, float] | None:
    """Pixel size from the X/YResolution tags (pixels per unit) times the unit in um."""
    sizes = []
    for name in ("YResolution", "XResolution"):
        value = page.tags.valueof(name)
        if value is None:
            return None
        numerator, denominator = value if isinstance(value, tuple) else (value, 1)
        if not numerator or not denominator:
            return None
        sizes.append(unit_um * denominator / numerator)
    return sizes[0], sizes[1]


def _ome_pixel_size(xml: str) -> tuple[float, float] | None:
    """PhysicalSizeY/X of the first OME Pixels element, in um (None if absent or odd)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels")), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m").strip().lower()
        if value is None or unit not in _UNIT_TO_UM:
            return None
        sizes.append(float(value) * _UNIT_TO_UM[unit])
    return (sizes[0], sizes[1]) if min(sizes) > 0 else None


def resolution_options(pixel_size: tuple[float, float], imagej: bool = False) -> dict:
    """tifffile write options storing `pixel_size` (y, x) um: resolution tags in
    pixels per centimetre, or with `imagej` per um with ImageJ's unit 'um'."""
    size_y, size_x = (float(s) for s in pixel_size)
    if not (size_y > 0 and size_x > 0 and np.isfinite([size_y, size_x]).all()):
        raise ValueError(f"pixel_size must be two positive numbers (um), got {pixel_size}")
    if imagej:
        return {"resolution": (1 / size_x, 1 / size_y), "metadata": {"unit": "um"}}
    return {"resolution": (1e4 / size_x, 1e4 / size_y), "resolutionunit": "CENTIMETER"}
