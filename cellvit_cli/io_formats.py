"""The formats `io` reads besides TIFF: PNG and JPEG images, and Cellpose's `_seg.npy`.

Each reader takes a file `io` has checked (it exists, is not empty) and returns numpy
arrays; a problem with the file is a ValueError whose message is one line, to which `io`
adds the file's name (`io.InputError`).
"""

import pickle
from pathlib import Path

import numpy as np

_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
_PNG_PALETTE = 3  # PNG IHDR colour type of indexed (palette) images


def file_format(path: Path) -> str:
    """'png' or 'jpeg' from the file's first bytes, else 'tiff' (tifffile then says what
    is wrong with a file that is none of them)."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), "tiff")


def read_png_jpeg(path: Path) -> tuple[np.ndarray, str]:
    """(pixels (C, Y, X) uint8 or uint16, axes 'YX' or 'YXS') of a PNG or JPEG file;
    alpha is dropped."""
    import imagecodecs

    kind = file_format(path)
    try:
        raw = imagecodecs.imread(str(path), codec="png" if kind == "png" else "jpeg8")
    except (ValueError, RuntimeError, OSError, EOFError) as err:
        raise ValueError(f"cannot read {kind.upper()}: {err}") from err
    if raw.size == 0:
        raise ValueError(f"zero-sized image: shape {raw.shape}")
    if raw.ndim == 2:
        return raw[np.newaxis], "YX"
    data = np.moveaxis(raw, -1, 0)  # (Y, X, S): grey + alpha, RGB or RGBA
    return (data[:-1] if data.shape[0] in (2, 4) else data), "YXS"


def is_palette_png(path: Path) -> bool:
    """Whether `path` is an indexed-colour PNG (whose pixels are palette indices)."""
    with open(path, "rb") as handle:
        head = handle.read(26)
    return head.startswith(b"\x89PNG") and len(head) == 26 and head[25] == _PNG_PALETTE


def read_png_indices(path: Path) -> np.ndarray:
    """The palette indices (Y, X) of an indexed PNG (the labels, not their colours)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as png:
            return np.asarray(png)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read PNG: {err}") from err


def read_seg_npy(path: Path) -> np.ndarray:
    """The "masks" (Y, X) of a Cellpose `_seg.npy` file (a pickled dict), or the array of a
    plain .npy file. Only numpy arrays and plain Python values are unpickled: a file that
    asks for anything else (code) is refused."""
    found = _load_npy(path)
    if isinstance(found, np.ndarray) and found.dtype.hasobject and found.shape == ():
        found = found.item()
    if isinstance(found, dict):
        if "masks" not in found:
            raise ValueError(f"a Cellpose _seg.npy holds 'masks'; found keys {sorted(found)}")
        found = found["masks"]
    masks = np.asarray(found)
    if masks.ndim != 2 or masks.dtype.kind not in "biu":
        raise ValueError(f"masks must be a (Y, X) integer array, got {masks.dtype} "
                         f"shape {masks.shape}")
    if masks.size == 0:
        raise ValueError(f"zero-sized image: shape {masks.shape}")
    return masks


def _load_npy(path: Path):
    """What a .npy file holds: an array, or the objects of a pickled one (arrays only)."""
    from numpy.lib import format as npy

    headers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    try:
        with open(path, "rb") as handle:
            version = npy.read_magic(handle)
            if version not in headers:
                raise ValueError(f"unsupported .npy format version {version}")
            if headers[version](handle)[2].hasobject:
                return _ArraysOnlyUnpickler(handle).load()
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, pickle.UnpicklingError, AttributeError) as err:
        raise ValueError(f"cannot read .npy: {err}") from err


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles what `np.save` writes for a dict of arrays (numpy arrays, dtypes and
    scalars, plain Python values) and refuses every other class."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype")} | {
        (module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (not an array)")
        if module == "numpy.core.multiarray":  # pickled by numpy 1, loaded by numpy 2
            module = np.ndarray.__reduce__(np.zeros(1))[0].__module__
        return super().find_class(module, name)
