"""A model ready to segment (`Segmenter`), what it is asked to do (`SegmentSettings`), and
`segment_array` for one image in memory. Files and folders: `pipeline.segment_paths`."""

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from cellvit_cli.inference.device import default_batch_size, resolve_device
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.inference.sizing import SizeEstimate, clamp_zoom, estimate_zoom
from cellvit_cli.preprocess import prepare, rescale, resize_labels

log = logging.getLogger(__name__)

BLOCK_MODES = ("auto", "on", "off")
AUTO = "auto"


@dataclass
class SegmentSettings:
    """What `segment_paths` and `segment_array` do, besides which images and where to.

    diameter: typical cell diameter in the input (px), giving zoom = the model's median
    training diameter / diameter; "auto" (or 0, the default) estimates it per image
    (`sizing.estimate_zoom`). scale: a fixed zoom instead (no estimate). batch_size: tiles
    per batch (None: 8 on a GPU, 1 on the CPU, where ViT-tiny takes ~180 MB per 512 px
    tile). block_mode: 'auto' (images above `pixel_budget` pixels after zoom), 'on' or
    'off'. workers: decoding threads (None: half the CPU cores, 1 to 4). progress: tqdm
    bars on stderr (shown on terminals only).
    """

    model: str | os.PathLike | None = None
    mode: str = "auto"
    channel: int | None = None
    diameter: float | str = AUTO
    scale: float | None = None
    batch_size: int | None = None
    device: str = "auto"
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

    def __post_init__(self) -> None:
        self.diameter = _parse_diameter(self.diameter)
        if self.scale is not None and self.diameter != AUTO:
            raise ValueError("give diameter or scale, not both")
        checks = [(self.batch_size is None or self.batch_size >= 1, "batch size must be >= 1"),
                  (self.tile_size >= 16, "tile size must be >= 16"),
                  (0 <= self.overlap < self.tile_size, "overlap must be >= 0 and < tile size"),
                  (self.block_mode in BLOCK_MODES, f"block mode must be one of {BLOCK_MODES}"),
                  (self.block_size >= 256, "block size must be >= 256"),
                  (self.scale is None or self.scale > 0, "scale must be > 0"),
                  (self.channel is None or self.channel >= 0, "channel must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def auto_size(self) -> bool:
        """Whether the zoom is estimated per image."""
        return self.scale is None and self.diameter == AUTO

    @property
    def exports(self) -> dict[str, bool]:
        """{output name in `export.OUTPUT_SUFFIXES`: asked for} of the optional outputs."""
        return {"rois": self.roi, "geojson": self.geojson, "overlay": self.overlay,
                "measurements": self.measure, "maps": self.save_maps}


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
    """

    def __init__(self, loaded, settings: SegmentSettings, device=None):
        from cellvit_cli.postprocess import auto_mode, required_heads

        config = loaded.config
        self.loaded, self.settings = loaded, settings
        self.mode = (auto_mode(config.heads, loaded.thresholds) if settings.mode == "auto"
                     else settings.mode)
        self.heads = heads = required_heads(self.mode)
        if not set(heads) <= set(config.heads):
            raise ValueError(f"mode {self.mode!r} needs head(s) {', '.join(heads)}; the model "
                             f"{loaded.path} has {', '.join(config.heads)}")
        self.device = device if device is not None else resolve_device(settings.device)
        network = DenseNetwork(loaded.model.to(self.device).eval(), heads)
        batch_size = settings.batch_size or default_batch_size(self.device)
        options = dict(device=self.device, batch_size=batch_size, tile_size=settings.tile_size,
                       overlap=settings.overlap)
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

    def prepare(self, data: np.ndarray, zoom: float = 1.0) -> np.ndarray:
        """Raw (C, Y, X) -> model input float32 (C_model, Y*zoom, X*zoom)."""
        return prepare(data, self.loaded.config.in_channels, None, zoom)

    def decode(self, maps: dict[str, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Labels (int32, `shape`) from maps of the zoomed image."""
        from cellvit_cli.postprocess import decode

        labels = decode(maps, self.mode, self.loaded.thresholds)
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

    image: (Y, X) or (C, Y, X), any real dtype; model: a `Segmenter` (built once, reused:
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
    x = segmenter.prepare(data)
    estimate = segmenter.estimate_array(x)
    if estimate.result is not None:
        maps, labels = estimate.result
    else:
        _fit_budget(estimate, data.shape[1:], settings.pixel_budget)
        maps = segmenter.predictor.predict(rescale(x, estimate.zoom))
        labels = segmenter.decode(maps, maps[segmenter.heads[0]].shape[1:])
    return resize_labels(labels, data.shape[1:]), estimate


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
    data = np.asarray(image)
    data = data[np.newaxis] if data.ndim == 2 else data
    if data.ndim != 3:
        raise ValueError(f"image must be (Y, X) or (C, Y, X), got shape {np.shape(image)}")
    return data
