"""What `segment` and `train` are asked to do: `SegmentSettings`, `TrainConfig` (with its
`AugmentConfig`) and `TrainRequest`, each validated once in its `__post_init__`.

Light on purpose (no numpy, torch or scipy): the CLI reads its defaults from these
dataclasses when it starts, and a bad value is a usage error before any heavy import.
"""

import math
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from cellvit_cli.registry import HEADS, MIN_RAYS, MODES, mode_spec

AUTO = "auto"
ALL = "all"
BLOCK_MODES = ("auto", "on", "off")
PRECISION_CHOICES = ("auto", "fp32", "bf16")
THRESHOLD_NAMES = ("prob_thresh", "nms_thresh", "flow_thresh", "fg_thresh", "boundary_thresh")
PERCENTILES = (1.0, 99.8)  # the default normalisation: these map to 0 and 1 (`preprocess`)


class SettingError(ValueError):
    """A setting that cannot be used; `names` are the fields at fault (the CLI's options
    are named after them: `tile_size` is `--tile-size`)."""

    def __init__(self, message: str, *names: str):
        super().__init__(message)
        self.names = names


def default_of(cls, name: str):
    """The default of dataclass `cls`'s field `name` (a default factory is called)."""
    spec = next(f for f in fields(cls) if f.name == name)
    return spec.default_factory() if spec.default is MISSING else spec.default


def _check(rules) -> None:
    """Raise SettingError(message, name) for the first (ok, name, message) not ok."""
    for ok, name, message in rules:
        if not ok:
            raise SettingError(message, name)


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
    tta: test-time augmentation, the maps averaged over the 8 flips and rotations of each
    tile (`inference.tta`; 8 network passes, size probes included).

    prob_thresh, nms_thresh, flow_thresh, fg_thresh, boundary_thresh: override the model's
    thresholds.json for the decoding mode (None: the model's; a threshold the mode does not
    use is a ValueError). min_size: objects under this many pixels (at the input's size)
    are dropped; exclude_edges: so are those touching the image border. norm_percentiles:
    (low, high) percentiles mapped to 0 and 1 (None: the model's config.json
    `normalization`); invert: then 1 - value (dark objects on a bright background).
    measure_channels: the channels measured ("all", or indices; None: `channel` if given,
    else all). Every bad value is a `SettingError` naming the field.
    """

    model: str | os.PathLike | None = None
    mode: str = AUTO
    channel: int | None = None
    diameter: float | str = AUTO
    scale: float | None = None
    batch_size: int | None = None
    device: str = AUTO
    precision: str = AUTO
    tta: bool = False
    tile_size: int = 512
    overlap: int = 64
    block_mode: str = AUTO
    block_size: int = 1536          # block mode keeps ~2 blocks of maps (~136 B/px) in memory
    pixel_budget: int = 3072 * 3072  # whole-image mode above this is 1.3 GB of maps
    overwrite: bool = False
    roi: bool = False
    geojson: bool = False
    overlay: bool = False
    measure: bool = False
    save_maps: bool = False
    zarr: bool = False
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
    norm_percentiles: tuple[float, float] | None = None
    invert: bool = False
    measure_channels: str | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.norm_percentiles is not None:
            self.norm_percentiles = check_percentiles(self.norm_percentiles)
        self.measure_channels = _parse_channels(self.measure_channels)
        self.diameter = _parse_diameter(self.diameter)
        self.precision = str(self.precision).strip().lower()
        if self.scale is not None and self.diameter != AUTO:
            raise SettingError("give diameter or scale, not both", "diameter", "scale")
        _check([(self.mode in (AUTO, *MODES), "mode",
                 f"mode must be one of auto, {', '.join(MODES)}"),
                (self.batch_size is None or self.batch_size >= 1, "batch_size",
                 "batch size must be >= 1"),
                (self.precision in PRECISION_CHOICES, "precision",
                 f"precision must be one of {', '.join(PRECISION_CHOICES)}"),
                (self.tile_size >= 16, "tile_size", "tile size must be >= 16"),
                (0 <= self.overlap < self.tile_size, "overlap",
                 "overlap must be >= 0 and < tile size"),
                (self.block_mode in BLOCK_MODES, "block_mode",
                 f"block mode must be one of {', '.join(BLOCK_MODES)}"),
                (self.block_size >= 256, "block_size", "block size must be >= 256"),
                (self.scale is None or self.scale > 0, "scale", "scale must be > 0"),
                (self.channel is None or self.channel >= 0, "channel", "channel must be >= 0"),
                (self.min_size >= 0, "min_size", "min size must be >= 0"),
                (self.measure_channels is None or self.measure, "measure_channels",
                 "measure channels (--measure-channels) need measure (--measure)")])
        check_thresholds(self.threshold_overrides, self.mode)

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
                "measurements": self.measure, "maps": self.save_maps, "zarr": self.zarr}


def check_percentiles(percentiles) -> tuple[float, float]:
    """(low, high) as floats with 0 <= low < high <= 100; SettingError otherwise."""
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise SettingError(f"normalisation percentiles must be two numbers LOW HIGH, "
                           f"got {percentiles!r}", "norm_percentiles") from None
    if not 0 <= low < high <= 100:
        raise SettingError(f"normalisation percentiles must satisfy 0 <= LOW < HIGH <= 100, "
                           f"got {low:g} {high:g}", "norm_percentiles")
    return low, high


def check_thresholds(overrides: dict[str, float], mode: str) -> None:
    """SettingError for a threshold out of range, or (mode not 'auto') one `mode` does not
    use."""
    for name, value in overrides.items():
        high = math.inf if name == "flow_thresh" else 1.0
        if not 0 <= value <= high:
            raise SettingError(f"{name} must be between 0 and {high:g}, got {value:g}", name)
    if mode == AUTO:
        return
    takes = mode_spec(mode).thresholds
    unused = sorted(set(overrides) - set(takes))
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        uses = ", ".join("--" + name.replace("_", "-") for name in takes)
        raise SettingError(f"{flags}: not used by mode {mode!r}, which takes {uses}", *unused)


def _parse_channels(value) -> str | tuple[int, ...] | None:
    """None, 'all' or channel indices (ints, or a '0,2' string) -> None, 'all' or a tuple."""
    if value is None or (isinstance(value, str) and value.strip().lower() == ALL):
        return None if value is None else ALL
    items = value.split(",") if isinstance(value, str) else value
    try:
        channels = tuple(int(str(item).strip()) for item in items)
    except ValueError:
        raise SettingError(f"measure channels must be 'all' or indices like 0,2, "
                           f"got {value!r}", "measure_channels") from None
    if not channels or min(channels) < 0:
        raise SettingError(f"measure channels must be 'all' or indices >= 0, got {value!r}",
                           "measure_channels")
    return tuple(dict.fromkeys(channels))


def _parse_diameter(value) -> float | str:
    """'auto', None or 0 -> 'auto'; a positive number -> float; SettingError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return AUTO
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"diameter must be 'auto' or a number of pixels, got {value!r}",
                           "diameter") from None
    if number < 0 or not math.isfinite(number):
        raise SettingError(f"diameter must be >= 0 (0: auto), got {value!r}", "diameter")
    return AUTO if number == 0 else number


@dataclass(frozen=True)
class AugmentConfig:
    """How training crops are drawn and jittered (`training.augment`); the steps after
    noise_std are off by default (the "robust" of AUGMENTATIONS turns them on)."""

    crop_size: int = 128
    scale_range: tuple[float, float] = (0.7, 1.4)  # zoom, sampled log-uniformly
    gain_range: tuple[float, float] = (0.6, 1.4)    # intensity * gain
    offset_range: tuple[float, float] = (-0.1, 0.1)  # intensity + offset
    gamma_range: tuple[float, float] = (0.7, 1.4)    # contrast: |x| ** gamma
    noise_std: float = 0.03
    noise_std_range: tuple[float, float] | None = None  # per crop, replaces noise_std
    object_gain_range: tuple[float, float] | None = None  # each object * its own gain
    object_gain_prob: float = 0.5    # share of crops whose objects get their own gains
    gradient_max: float = 0.0        # background + a linear ramp of up to this amplitude
    blur_sigma_max: float = 0.0      # Gaussian blur of sigma uniform in [0, max] px
    blur_prob: float = 0.3
    crowded_fraction: float = 0.0    # share of crops centred on a contact between objects

    def __post_init__(self) -> None:
        _check([(self.crop_size >= 32, "crop_size", "crop size must be >= 32")])


AUGMENTATIONS = {  # `cellvit train --augment NAME`
    "standard": AugmentConfig(),  # the recipe of nuclei_fluo_tiny
    # aimed at its failures (issue 12): dim objects beside bright ones, uneven background,
    # blur and noise of several levels, crowded regions, a wider zoom range
    "robust": AugmentConfig(scale_range=(0.6, 1.6), noise_std_range=(0.0, 0.08),
                            object_gain_range=(0.15, 1.0), gradient_max=0.3,
                            blur_sigma_max=1.5, crowded_fraction=0.3),
}


@dataclass
class TrainConfig:
    """How `cellvit train` trains: the model (every head by default), the schedule,
    validation, device, precision and seed.

    precision: autocast of the training steps (weights, optimizer and losses stay fp32):
    'auto' (mixed precision on CUDA, bf16 where supported else fp16; bf16 on CPUs with AMX;
    fp32 on other CPUs and MPS), 'fp32' or 'bf16' (`training.loop.training_dtype`).
    norm_percentiles: (low, high) intensity percentiles of each image mapped to 0 and 1,
    written to the model's config.json (`segment` normalises its inputs the same way)."""

    variant: str = "vit_tiny_p16_s2"
    heads: tuple[str, ...] = HEADS
    n_rays: int = 32
    in_channels: int = 1
    epochs: int = 100
    steps_per_epoch: int | None = None   # default: one crop per training image and epoch
    batch_size: int = 8
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 200
    val_every: int = 1                   # epochs between validations
    val_modes: tuple[str, ...] | None = None  # default: every mode the heads allow
    device: str = AUTO
    precision: str = AUTO
    seed: int = 0
    time_budget: float | None = None     # minutes; the schedule then follows time, not steps
    norm_percentiles: tuple[float, float] = PERCENTILES  # -> config.json normalization

    def __post_init__(self) -> None:
        self.precision = str(self.precision).strip().lower()
        self.norm_percentiles = check_percentiles(self.norm_percentiles)
        _check([(len(self.heads) > 0 and set(self.heads) <= set(HEADS), "heads",
                 f"heads must be a comma list of {', '.join(HEADS)}, got "
                 f"{','.join(self.heads) or 'none'}"),
                (self.n_rays >= MIN_RAYS, "n_rays", f"n rays must be >= {MIN_RAYS}"),
                (self.in_channels >= 1, "in_channels", "in channels must be >= 1"),
                (self.epochs >= 1, "epochs", "epochs must be >= 1"),
                (self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
                 "steps per epoch must be >= 1"),
                (self.batch_size >= 1, "batch_size", "batch size must be >= 1"),
                (self.lr > 0, "lr", "lr must be > 0"),
                (self.warmup_steps >= 1, "warmup_steps", "warm-up steps must be >= 1"),
                (self.val_every >= 1, "val_every", "val every must be >= 1"),
                (self.precision in PRECISION_CHOICES, "precision",
                 f"precision must be one of {', '.join(PRECISION_CHOICES)}"),
                (self.time_budget is None or self.time_budget > 0, "time_budget",
                 "time budget must be > 0 minutes")])


@dataclass
class TrainRequest:
    """Where the training data is and where the model goes."""

    images: Path
    masks: Path
    ids_file: Path | None = None
    val_images: Path | None = None
    val_masks: Path | None = None
    val_ids_file: Path | None = None
    val_fraction: float | None = None  # hold out this fraction of the pairs (0 to 0.9)
    out_dir: Path = Path("model")
    cache_dir: Path | None = None
    mask_suffix: str | None = None   # None: found from the names (see cellvit_cli.pairing)
    init_model: str | None = None    # model folder or shipped name to start from (fine-tune)

    def __post_init__(self) -> None:
        _check([(self.val_fraction is None or 0 <= self.val_fraction <= 0.9, "val_fraction",
                 "val fraction must be between 0 and 0.9")])
