"""Turn raw image data into what the network sees: channels, intensity scale, pixel scale."""

import numpy as np
from scipy import ndimage as ndi

PERCENTILES = (1.0, 99.8)


def normalize_percentile(data: np.ndarray, low: float = PERCENTILES[0],
                         high: float = PERCENTILES[1]) -> np.ndarray:
    """Scale each channel so its `low`/`high` percentiles map to 0/1.

    data: (C, Y, X) any real dtype. Returns float32 (C, Y, X), not clipped. A flat channel
    becomes all zeros.
    """
    data = np.asarray(data, dtype=np.float32)
    out = np.empty_like(data)
    for c, channel in enumerate(data):
        lo, hi = np.percentile(_subsample(channel), (low, high))
        out[c] = (channel - lo) / max(hi - lo, 1e-6) if hi > lo else 0.0
    return out


def _subsample(channel: np.ndarray, max_pixels: int = 1 << 22) -> np.ndarray:
    """A strided view of at most ~`max_pixels` pixels, enough for stable percentiles."""
    step = max(1, int(np.sqrt(channel.size / max_pixels)))
    return channel[::step, ::step]


def to_channels(data: np.ndarray, in_channels: int, channel: int | None = None) -> np.ndarray:
    """Select or merge channels of (C, Y, X) data into the model's `in_channels`.

    `channel` picks one channel (0-based); otherwise a single-channel model gets the mean
    of all channels (grey from RGB), and a multi-channel model gets the first `in_channels`
    (a single channel is repeated). Raises ValueError if `channel` is out of range.
    """
    n = data.shape[0]
    if channel is not None:
        if not 0 <= channel < n:
            raise ValueError(f"channel {channel} out of range: the image has {n} channel(s)")
        data = data[channel:channel + 1]
        n = 1
    if in_channels == 1:
        return data if n == 1 else data.astype(np.float32).mean(axis=0, keepdims=True)
    if n == 1:
        return np.repeat(data, in_channels, axis=0)
    if n < in_channels:
        raise ValueError(f"the model needs {in_channels} channels, the image has {n}")
    return data[:in_channels]


def rescale(data: np.ndarray, scale: float, order: int = 1) -> np.ndarray:
    """Zoom (C, Y, X) data by `scale` in Y and X (order 1: bilinear, 0: nearest)."""
    if scale == 1.0:
        return data
    return ndi.zoom(data, (1.0, scale, scale), order=order, prefilter=False)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (Y, X) label image to `shape`."""
    if labels.shape == tuple(shape):
        return labels
    zoom = (shape[0] / labels.shape[0], shape[1] / labels.shape[1])
    out = ndi.zoom(labels, zoom, order=0, prefilter=False, grid_mode=True, mode="grid-constant")
    return out[: shape[0], : shape[1]]


def check_percentiles(percentiles) -> tuple[float, float]:
    """(low, high) as floats with 0 <= low < high <= 100; ValueError otherwise."""
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ValueError(f"normalisation percentiles must be two numbers LOW HIGH, "
                         f"got {percentiles!r}") from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"normalisation percentiles must satisfy 0 <= LOW < HIGH <= 100, "
                         f"got {low:g} {high:g}")
    return low, high


def averages_channels(n_channels: int, in_channels: int, channel: int | None = None) -> bool:
    """Whether `to_channels` averages several channels into one for a one-channel model."""
    return in_channels == 1 and channel is None and n_channels > 1


def invert(image: np.ndarray) -> np.ndarray:
    """1 - image of normalised data (dark objects on a bright background become bright)."""
    return np.subtract(1.0, image, dtype=np.float32)


def prepare(data: np.ndarray, in_channels: int, channel: int | None = None,
            scale: float = 1.0, percentiles=PERCENTILES, inverted: bool = False
            ) -> np.ndarray:
    """Raw (C, Y, X) -> model input float32 (in_channels, Y*scale, X*scale), normalised
    between `percentiles` (low, high) and, if `inverted`, turned to 1 - value."""
    image = normalize_percentile(to_channels(data, in_channels, channel), *percentiles)
    image = invert(image) if inverted else image
    return rescale(image, scale).astype(np.float32, copy=False)
