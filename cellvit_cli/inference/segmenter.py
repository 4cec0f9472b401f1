"""A model ready to segment (`Segmenter`), what it is asked to do (`SegmentSettings`), and
`segment_array` for one image in memory. Files and folders: `pipeline.segment_paths`."""

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from cellvit_cli.device import (PRECISION_CHOICES, default_batch_size,
                                          resolve_device, resolve_precision)
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.inference.sizing import SizeEstimate, clamp_zoom, estimate_zoom
from cellvit_cli.postprocess.cleanup import ALL_BORDERS, clean_labels
from cellvit_cli.preprocess import (PERCENTILES, averages_channels, check_percentiles, prepare,
                                    rescale, resize_labels)

log = logging.getLogger(__name__)

BLOCK_MODES = ("auto", "on", "off")
AUTO = "auto"
ALL = "all"
THRESHOLD_NAMES = ("prob_thresh", "nms_thresh", "flow_thresh", "fg_thresh", "boundary_thresh")


@dataclass
class SegmentSettings:
    """What `segment_paths` and `segment_array` do, besides which images and where to.

    diameter: typical cell diameter in the input (px), giving zoom = the model's median
    training diameter / diameter; "auto" (or 0, the default) estimates it per image
    (`sizing.estimate_zoom`). scale: a fixed zoom instead (no estimate). batch_size: tiles
    per batch (None: 8 on a GPU, 1 on the CPU, where ViT-tiny takes ~180 MB per 512 px
    tile). precision: 'auto' (bf16 on CUDA and on CPUs with native bf16, else fp32),
    'fp32' or 'bf16' (`device.resolve_precision`). block_mode: 'auto' (images above
    `pixel_budget` pixels after zoom), 'on' or 'off'. workers: decoding threads (None:
    half the CPU cores, 1 to 4). progress: tqdm bars on stderr (shown on terminals only).

    prob_thresh, nms_thresh, flow_thresh, fg_thresh, boundary_thresh: override the model's
    thresholds.json for the decoding mode (None: the model's; a threshold the mode does not
    use is a ValueError). min_size: objects under this many pixels (at the input's size)
    are dropped; exclude_edges: so are those touching the image border. norm_percentiles:
    (low, high) percentiles mapped to 0 and 1; invert: then 1 - value (dark objects on a
    bright background). measure_channels: the channels measured ("all", or indices; None:
    `channel` if given, else all).
    """

    model: str | os.PathLike | None = None
    mode: str = "auto"
    channel: int | None = None
    diameter: float | str = AUTO
    scale: float | None = None
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    tile_size: int = 512
    overlap: int = 64
    block_mode: str = "auto"
    block_size: int = 1536          # block mode keeps ~2 blocks of maps (~136 B/px) in memory
    pixel_budget: int = 3072 * 3072  # whole-image mode above this is 1.3 GB of maps
    overwrite: bool = False
    roi: bool = False
    geojson: bool = False
    overlay: bool = False
    measure: bool = False
    save_maps: bool = False
    recursive: bool = False
    pattern: str | None = None
    workers: int | None = None
    progress: bool = True
    prob_thresh: float | None = None
    nms_thresh: float | None = None
    flow_thresh: float | None = None
    fg_thresh: float | None = None
    boundary_thresh: float | None = None
    min_size: int = 0
    exclude_edges: bool = False
    norm_percentiles: tuple[float, float] = PERCENTILES
    invert: bool = False
    measure_channels: str | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.norm_percentiles = check_percentiles(self.norm_percentiles)
        self.measure_channels = _parse_channels(self.measure_channels)
        check_thresholds(self.threshold_overrides, self.mode)
        self.diameter = _parse_diameter(self.diameter)
        self.precision = str(self.precision).strip().lower()
        if self.scale is not None and self.diameter != AUTO:
            raise ValueError("give diameter or scale, not both")
        checks = [(self.batch_size is None or self.batch_size >= 1, "batch size must be >= 1"),
                  (self.precision in PRECISION_CHOICES,
                   f"precision must be one of {', '.join(PRECISION_CHOICES)}"),
                  (self.tile_size >= 16, "tile size must be >= 16"),
                  (0 <= self.overlap < self.tile_size, "overlap must be >= 0 and < tile size"),
                  (self.block_mode in BLOCK_MODES, f"block mode must be one of {BLOCK_MODES}"),
                  (self.block_size >= 256, "block size must be >= 256"),
                  (self.scale is None or self.scale > 0, "scale must be > 0"),
                  (self.channel is None or self.channel >= 0, "channel must be >= 0"),
                  (self.min_size >= 0, "min size must be >= 0"),
                  (self.measure_channels is None or self.measure,
                   "measure channels (--measure-channels) need measure (--measure)")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def auto_size(self) -> bool:
        """Whether the zoom is estimated per image."""
        return self.scale is None and self.diameter == AUTO

    @property
    def threshold_overrides(self) -> dict[str, float]:
        """{threshold name: value} of the thresholds given (not None)."""
        return {name: float(getattr(self, name)) for name in THRESHOLD_NAMES
                if getattr(self, name) is not None}

    def measured_channels(self, n_channels: int) -> list[int]:
        """The channel indices of an image of `n_channels` that measurements cover;
        ValueError for one out of range."""
        chosen = self.measure_channels
        if chosen is None:
            chosen = ALL if self.channel is None else (self.channel,)
        if chosen != ALL and max(chosen) >= n_channels:
            raise ValueError(f"measure channel {max(chosen)} out of range: the image has "
                             f"{n_channels} channel(s), numbered from 0")
        return list(range(n_channels)) if chosen == ALL else list(chosen)

    @property
    def exports(self) -> dict[str, bool]:
        """{output name in `export.OUTPUT_SUFFIXES`: asked for} of the optional outputs."""
        return {"rois": self.roi, "geojson": self.geojson, "overlay": self.overlay,
                "measurements": self.measure, "maps": self.save_maps}


def check_thresholds(overrides: dict[str, float], mode: str) -> None:
    """ValueError for a threshold out of range, or (mode not 'auto') one `mode` does not use."""
    from cellvit_cli.postprocess import DEFAULT_THRESHOLDS

    for name, value in overrides.items():
        high = math.inf if name == "flow_thresh" else 1.0
        if not 0 <= value <= high:
            raise ValueError(f"{name} must be between 0 and {high:g}, got {value:g}")
    if mode == AUTO:
        return
    unused = sorted(set(overrides) - set(DEFAULT_THRESHOLDS[mode]))
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        uses = ", ".join("--" + name.replace("_", "-") for name in DEFAULT_THRESHOLDS[mode])
        raise ValueError(f"{flags}: not used by mode {mode!r}, which takes {uses}")


def _parse_channels(value) -> str | tuple[int, ...] | None:
    """None, 'all' or channel indices (ints, or a '0,2' string) -> None, 'all' or a tuple."""
    if value is None or (isinstance(value, str) and value.strip().lower() == ALL):
        return None if value is None else ALL
    items = value.split(",") if isinstance(value, str) else value
    try:
        channels = tuple(int(str(item).strip()) for item in items)
    except ValueError:
        raise ValueError(f"measure channels must be 'all' or indices like 0,2, "
                         f"got {value!r}") from None
    if not channels or min(channels) < 0:
        raise ValueError(f"measure channels must be 'all' or indices >= 0, got {value!r}")
    return tuple(dict.fromkeys(channels))


def _parse_diameter(value) -> float | str:
    """'auto', None or 0 -> 'auto'; a positive number -> float; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return AUTO
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"diameter must be 'auto' or a number of pixels, got {value!r}") from None
    if number < 0 or not np.isfinite(number):
        raise ValueError(f"diameter must be >= 0 (0: auto), got {value!r}")
    return AUTO if number == 0 else number


class Segmenter:
    """A model ready to segment: decoding mode, thresholds, zoom and a `Predictor`.

    `scale` is the fixed zoom, or None when it is estimated per image (`estimate`).
    `heads`: those the mode decodes; `map_heads`: those the network computes (every head of
    the model with settings.save_maps, else `heads`).
    """

    def __init__(self, loaded, settings: SegmentSettings, device=None):
        from cellvit_cli.postprocess import auto_mode, mode_thresholds, required_heads

        config = loaded.config
        self.loaded, self.settings = loaded, settings
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
        batch_size = settings.batch_size or default_batch_size(self.device)
        options = dict(device=self.device, batch_size=batch_size, tile_size=settings.tile_size,
                       overlap=settings.overlap,
                       precision=resolve_precision(settings.precision, self.device))
        self.predictor = Predictor(network, **options)
        self.probe_predictor = Predictor(network, **options)  # size probes, in another thread
        if settings.scale is not None:
            self.scale: float | None = float(settings.scale)
        elif settings.diameter != AUTO:
            self.scale = config.median_diameter / settings.diameter
        else:
            self.scale = None

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
        """Raw (C, Y, X) -> model input float32 (C_model, Y*zoom, X*zoom), normalised as
        the settings say. `name` (the image's file): warn when its channels are averaged."""
        if name is not None:
            self.warn_averaged(data.shape[0], name)
        settings = self.settings
        return prepare(data, self.loaded.config.in_channels, None, zoom,
                       settings.norm_percentiles, settings.invert)

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
        mode = self.settings.block_mode
        if mode != "auto":
            return mode == "on"
        zoom = zoom if zoom is not None else (self.scale or 1.0)
        return shape[0] * shape[1] * zoom ** 2 > self.settings.pixel_budget


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
        if settings.channel >= data.shape[0]:
            raise ValueError(f"channel {settings.channel} out of range: the image has "
                             f"{data.shape[0]} channel(s)")
        data = data[settings.channel:settings.channel + 1]
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
