"""A model ready to segment (`Segmenter`), what it is asked to do (`SegmentSettings`), and
`segment_array` for one image in memory. Files and folders: `pipeline.segment_paths`."""

import logging
import math

import numpy as np

from cellvit_cli.device import default_batch_size, resolve_device, resolve_precision
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.inference.sizing import SizeEstimate, clamp_zoom, estimate_zoom
from cellvit_cli.inference.tta import TTANetwork
from cellvit_cli.postprocess.cleanup import ALL_BORDERS, clean_labels
from cellvit_cli.preprocess import (averages_channels, prepare, rescale, resize_labels,
                                    select_channel)
from cellvit_cli.settings import AUTO, BLOCK_MODES, SegmentSettings, check_thresholds

__all__ = ["BLOCK_MODES", "SegmentSettings", "Segmenter", "check_thresholds", "fixed_zoom",
           "segment_array", "segment_array_with_size", "uses_blocks"]

log = logging.getLogger(__name__)


class Segmenter:
    """A model ready to segment: decoding mode, thresholds, zoom and a `Predictor`.

    `scale` is the fixed zoom, or None when it is estimated per image (`estimate`).
    `heads`: those the mode decodes; `map_heads`: those the network computes (every head of
    the model with settings.save_maps, else `heads`). `percentiles`: the (low, high)
    normalisation percentiles, settings.norm_percentiles or else the model's.
    """

    def __init__(self, loaded, settings: SegmentSettings, device=None):
        from cellvit_cli.postprocess import auto_mode, mode_thresholds, required_heads

        config = loaded.config
        self.loaded, self.settings = loaded, settings
        self.percentiles = settings.norm_percentiles or config.percentiles
        self.mode = (auto_mode(config.heads, loaded.thresholds) if settings.mode == "auto"
                     else settings.mode)
        self.heads = heads = required_heads(self.mode)
        if not set(heads) <= set(config.heads):
            raise ValueError(f"mode {self.mode!r} needs head(s) {', '.join(heads)}; the model "
                             f"{loaded.path} has {', '.join(config.heads)}")
        self.map_heads = tuple(config.heads) if settings.save_maps else heads
        check_thresholds(settings.threshold_overrides, self.mode)
        self.thresholds = {**(loaded.thresholds or {}), self.mode: {
            **mode_thresholds(self.mode, loaded.thresholds), **settings.threshold_overrides}}
        self.device = device if device is not None else resolve_device(settings.device)
        network = DenseNetwork(loaded.model.to(self.device).eval(), self.map_heads)
        if settings.tta:
            network = TTANetwork(network)
        batch_size = settings.batch_size or default_batch_size(self.device)
        options = dict(device=self.device, batch_size=batch_size, tile_size=settings.tile_size,
                       overlap=settings.overlap,
                       precision=resolve_precision(settings.precision, self.device))
        self.predictor = Predictor(network, **options)
        self.probe_predictor = Predictor(network, **options)  # size probes, in another thread
        self.scale = fixed_zoom(settings, config.median_diameter)

    @classmethod
    def from_settings(cls, settings: SegmentSettings, model=None) -> "Segmenter":
        """Load `model` (a LoadedModel, a model folder or shipped name; None: settings.model,
        else the default model) onto the device of `settings`."""
        from cellvit_cli.modeling import LoadedModel, load_model_folder

        device = resolve_device(settings.device)
        if not isinstance(model, LoadedModel):
            model = load_model_folder(model if model is not None else settings.model, device)
        return cls(model, settings, device)

    def prepare(self, data: np.ndarray, zoom: float = 1.0, name=None) -> np.ndarray:
        """Raw (C, Y, X) -> model input float32 (C_model, Y*zoom, X*zoom), normalised
        between `percentiles` (inverted if the settings say). `name` (the image's file):
        warn when its channels are averaged."""
        if name is not None:
            self.warn_averaged(data.shape[0], name)
        return prepare(data, self.loaded.config.in_channels, None, zoom, self.percentiles,
                       self.settings.invert)

    def warn_averaged(self, n_channels: int, name) -> None:
        """Log a warning naming `name` and --channel when a one-channel model would get the
        mean of the image's `n_channels` channels."""
        if averages_channels(n_channels, self.loaded.config.in_channels, self.settings.channel):
            log.warning("%s: %d channels averaged into one for this one-channel model; "
                        "choose one with --channel N (0-based; SegmentSettings.channel)",
                        name, n_channels)

    def clean(self, labels: np.ndarray, borders=ALL_BORDERS) -> np.ndarray:
        """Labels at the input's size without the objects under settings.min_size and, with
        settings.exclude_edges, those touching `borders` (top, bottom, left, right)."""
        return clean_labels(labels, self.settings.min_size, self.settings.exclude_edges,
                            borders)

    def decode(self, maps: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Labels (int32, `shape`) from maps of the zoomed image."""
        from cellvit_cli.postprocess import decode

        labels = decode(maps, self.mode, self.thresholds)
        return resize_labels(labels, tuple(shape))

    def segment_input(self, x: np.ndarray) -> tuple[dict, np.ndarray]:
        """(maps, labels at the size of x) of model input x (C, y, x), with the probe predictor."""
        maps = self.probe_predictor.predict(x)
        return maps, self.decode(maps, x.shape[1:])

    def estimate(self, shape: tuple[int, int], read, whole_pixels: float | None = None
                 ) -> SizeEstimate:
        """The zoom for an image of `shape` (Y, X): fixed, or estimated from `read(region,
        zoom) -> model input` (see `sizing.estimate_zoom`)."""
        target = self.loaded.config.median_diameter
        if self.scale is not None:
            zoom = clamp_zoom(self.scale, shape)
            note = None if zoom == self.scale else f"zoom {self.scale:.3g} clamped to {zoom:.3g}"
            diameter = self.settings.diameter if self.settings.diameter != AUTO else None
            return SizeEstimate(diameter, zoom, note)
        budget = self.settings.pixel_budget if whole_pixels is None else whole_pixels
        return estimate_zoom(shape, read, self.segment_input, target, budget)

    def estimate_array(self, x: np.ndarray) -> SizeEstimate:
        """The zoom for model input x (C, Y, X) at zoom 1, held in memory."""
        return self.estimate(x.shape[1:], lambda region, zoom: rescale(x[(slice(None), *region)],
                                                                       zoom))

    def uses_blocks(self, shape: tuple[int, int], zoom: float | None = None) -> bool:
        """Whether an image of `shape` goes through block mode (at `zoom`, else the fixed
        zoom, else 1)."""
        return uses_blocks(self.settings, shape, zoom if zoom is not None else self.scale)


def uses_blocks(settings: SegmentSettings, shape: tuple[int, int], zoom: float | None) -> bool:
    """Whether an image of `shape` (Y, X) at `zoom` (None: 1) goes through block mode."""
    if settings.block_mode != "auto":
        return settings.block_mode == "on"
    return shape[0] * shape[1] * (zoom or 1.0) ** 2 > settings.pixel_budget


def fixed_zoom(settings: SegmentSettings, median_diameter: float) -> float | None:
    """The zoom of `settings` for a model of `median_diameter` px: --scale, else from
    --diameter, else None (estimated per image)."""
    if settings.scale is not None:
        return float(settings.scale)
    if settings.diameter != AUTO:
        return median_diameter / settings.diameter
    return None


def segment_array(image: np.ndarray, model=None, settings: SegmentSettings | None = None
                  ) -> np.ndarray:
    """Segment one image held in memory.

    image: (Y, X), (C, Y, X) or channel-last RGB(A) (Y, X, 3|4) with Y, X > 4 (alpha
    dropped), any real dtype; model: a `Segmenter` (built once, reused:
    its settings apply), a `LoadedModel`, a model folder or shipped name (None:
    settings.model, else the default model). Returns int32 labels (Y, X), 0 = background.
    The zoom is estimated unless the settings fix it (`segment_array_with_size` also
    returns the estimate). Whole-image mode: for images that do not fit in memory, use
    `segment_paths`, which switches to block mode.
    """
    return segment_array_with_size(image, model, settings)[0]


def segment_array_with_size(image: np.ndarray, model=None,
                            settings: SegmentSettings | None = None
                            ) -> tuple[np.ndarray, SizeEstimate]:
    """`segment_array`, returning (labels, the `SizeEstimate` it used)."""
    if isinstance(model, Segmenter):
        segmenter, settings = model, settings or model.settings
    else:
        settings = settings or SegmentSettings(progress=False)
        segmenter = Segmenter.from_settings(settings, model)
    data = _as_cyx(image)
    if settings.channel is not None:
        data = select_channel(data, settings.channel)
    x = segmenter.prepare(data, name="image")
    estimate = segmenter.estimate_array(x)
    if estimate.result is not None:
        maps, labels = estimate.result
    else:
        _fit_budget(estimate, data.shape[1:], settings.pixel_budget)
        maps = segmenter.predictor.predict(rescale(x, estimate.zoom))
        labels = segmenter.decode(maps, maps[segmenter.heads[0]].shape[1:])
    return segmenter.clean(resize_labels(labels, data.shape[1:])), estimate


def _fit_budget(estimate: SizeEstimate, shape: tuple[int, int], pixel_budget: int) -> None:
    """Lower `estimate.zoom` (with a note and a warning) so that the zoomed image keeps
    within `pixel_budget` pixels: an array in memory has no block mode."""
    limit = math.sqrt(pixel_budget / (shape[0] * shape[1]))
    if estimate.zoom > limit:
        estimate.note = (f"zoom {estimate.zoom:.3g} lowered to {limit:.3g} to keep within "
                         f"{pixel_budget:,} pixels (segment_paths would use block mode)")
        log.warning("%s", estimate.note)
        estimate.zoom = limit


def _as_cyx(image: np.ndarray) -> np.ndarray:
    """(Y, X), (C, Y, X) or channel-last RGB(A) (Y, X, 3|4), Y and X > 4 -> (C, Y, X),
    without alpha."""
    data = np.asarray(image)
    data = data[np.newaxis] if data.ndim == 2 else data
    if data.ndim != 3:
        raise ValueError(f"image must be (Y, X), (C, Y, X) or RGB (Y, X, 3), "
                         f"got shape {np.shape(image)}")
    if data.shape[2] in (3, 4) and min(data.shape[:2]) > 4:
        data = np.moveaxis(data[..., :3], -1, 0)
    return data
