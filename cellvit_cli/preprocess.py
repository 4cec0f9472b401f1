"""Turn raw image data into what the network sees: channels, intensity scale, pixel scale."""

import math

import numpy as np
from scipy import ndimage as ndi

from cellvit_cli.settings import PERCENTILES

SAMPLE_PIXELS = 1 << 22  # percentiles from a strided subsample of ~4 Mpx


def normalize_percentile(data: np.ndarray, low: float = PERCENTILES[0],
                         high: float = PERCENTILES[1]) -> np.ndarray:
    """Scale each channel so its `low`/`high` percentiles map to 0/1.

    data: (C, Y, X) any real dtype. Returns float32 (C, Y, X), not clipped. A flat channel
    becomes all zeros. The percentiles come from a strided subsample (`sample_step`).
    """
    data = np.asarray(data, dtype=np.float32)
    step = sample_step(data.shape[1:])
    return normalize(data, *percentile_bounds(data[:, ::step, ::step], (low, high)))


def sample_step(shape: tuple[int, int]) -> int:
    """The stride in Y and X of a subsample of an image of `shape` with at most
    ~`SAMPLE_PIXELS` pixels, enough for stable percentiles."""
    return max(1, int(math.sqrt(shape[0] * shape[1] / SAMPLE_PIXELS)))


def percentile_bounds(sample: np.ndarray, percentiles=PERCENTILES
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(low, high), each (C,) float64: the `percentiles` (low, high) of each channel of
    the (C, y, x) float32 `sample`."""
    low, high = np.percentile(sample, percentiles, axis=(1, 2))
    return low, high


def normalize(data: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(C, Y, X) float32 `data` with each channel's `low`/`high` (C,) mapped to 0/1 (a
    channel with high <= low becomes all zeros). Returns float32 (C, Y, X), not clipped;
    `data` is left as it was."""
    out = np.empty_like(data)
    for c, (lo, hi) in enumerate(zip(low, high)):
        out[c] = (data[c] - lo) / max(hi - lo, 1e-6) if hi > lo else 0.0
    return out


def select_channel(data: np.ndarray, channel: int) -> np.ndarray:
    """Channel `channel` (0-based) of (C, Y, X) `data`, as (1, Y, X); ValueError when it
    is out of range."""
    n = data.shape[0]
    if not 0 <= channel < n:
        raise ValueError(f"channel {channel} out of range: the image has {n} channel(s), "
                         "numbered from 0")
    return data[channel:channel + 1]


def to_channels(data: np.ndarray, in_channels: int, channel: int | None = None) -> np.ndarray:
    """Select or merge channels of (C, Y, X) data into the model's `in_channels`.

    `channel` picks one channel (0-based); otherwise a single-channel model gets the mean
    of all channels (grey from RGB), and a multi-channel model gets the first `in_channels`
    (a single channel is repeated). Raises ValueError if `channel` is out of range.
    """
    if channel is not None:
        data = select_channel(data, channel)
    n = data.shape[0]
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


class RegionSource:
    """Model input for any region of a big image, the same as `prepare` gives for the
    whole image: `to_channels`, `normalize` with the percentile bounds of the whole image
    (`percentile_bounds` of its `sample_step` subsample, read once band by band) at
    `percentiles` (low, high), 1 - value if `inverted`, zoom by `scale`.

    regions: has `shape` (C, Y, X) and `read(ys, xs) -> (C, y, x)` (e.g.
    `bigtiff.CheckedRegions`); the bounds pass reads every pixel once, unless `bounds`
    (low, high: the `low`, `high` of a RegionSource of the same image) are given.
    """

    BAND_ROWS = 1024

    def __init__(self, regions, in_channels: int, scale: float = 1.0,
                 percentiles=PERCENTILES, inverted: bool = False, bounds=None):
        self.regions, self.in_channels = regions, in_channels
        self.scale, self.inverted = scale, inverted
        self.shape = tuple(regions.shape[1:])
        self.low, self.high = bounds or percentile_bounds(self._sample(), percentiles)

    def _sample(self) -> np.ndarray:
        """The `sample_step` subsample (C, y, x) float32 of the whole image."""
        n_y, n_x = self.shape
        step = sample_step(self.shape)
        band = step * math.ceil(self.BAND_ROWS / step)
        return np.concatenate([
            to_channels(self.regions.read(slice(y, y + band), slice(0, n_x)), self.in_channels)
            [:, ::step, ::step].astype(np.float32) for y in range(0, n_y, band)], axis=1)

    def read(self, region: tuple[slice, slice], zoom: float | None = None) -> np.ndarray:
        """(in_channels, y * zoom, x * zoom) float32 model input of `region` (ys, xs) of
        the image (zoom: `scale` if None)."""
        data = to_channels(self.regions.read(*region), self.in_channels).astype(np.float32)
        data = normalize(data, self.low, self.high)
        data = invert(data) if self.inverted else data
        zoom = self.scale if zoom is None else zoom
        return rescale(data, zoom).astype(np.float32, copy=False)
