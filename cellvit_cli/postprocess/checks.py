"""What the decoders share: input checks (validate, convert, return), relabelling, and the
smallest object they keep."""

import numpy as np

MIN_SIZE = 10  # pixels: flow, boundary and fused drop smaller objects (smallest DSB nucleus: 21)


def as_float_map(array, ndim: int, name: str) -> np.ndarray:
    """`array` as a float32 array of `ndim` dimensions; ValueError if it is not one.

    Integer and boolean arrays are refused: a dense map holds probabilities or distances.
    """
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got dtype {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.float32)


def check_same_shape(shape: tuple[int, ...], **arrays: np.ndarray) -> None:
    """ValueError unless every array's last two dimensions equal `shape` (Y, X)."""
    for name, array in arrays.items():
        if array.shape[-2:] != tuple(shape):
            raise ValueError(f"{name} has shape {array.shape}, "
                             f"expected (..., {shape[0]}, {shape[1]})")


def relabel(labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Drop objects smaller than `min_size` pixels and number the rest 1..N.

    labels: (Y, X) int, 0 = background. Returns int32 (Y, X).
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_size, 1)
    keep[0] = False
    new_ids = np.zeros(sizes.size, np.int32)
    new_ids[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return new_ids[labels]
