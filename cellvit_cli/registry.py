"""The heads and the decoding modes: what each one is, in the one place every layer reads.

A head is a dense map the network predicts (channel layout in docs/architecture.md); a mode
decodes the maps of one or more heads into instance labels. The code of each is named here
as a "module:function" `Lazy` reference, imported on its first call, so this module imports
neither torch nor stardist nor cellpose: the CLI reads the names without them.

Adding a head: its target builder (targets/), activation (modeling/heads.py), loss
(training/losses.py) and decoder (postprocess/), one `Head` in `_HEADS` and a `Mode` in
`_MODES` below. Still by name elsewhere: how a training crop gets each head's targets
(`training.augment.crop_at`: star with a margin of context, boundary on the crop, flow
from the per-image cache of `training.data`), the threshold fields of `settings`
(SegmentSettings, THRESHOLD_NAMES) and the CLI's threshold options, and the round-trip
test's minimum scores (docs/architecture.md, "Adding a head").
"""

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import import_module

MIN_RAYS = 3  # a star polygon needs at least 3 rays


@cache
def resolve(ref: str):
    """The attribute named by `ref` ("package.module:attribute"), imported on first use."""
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


class Lazy(str):
    """A "package.module:function" reference that calls the function, imported on first call."""

    def __call__(self, *args, **kwargs):
        return resolve(self)(*args, **kwargs)


@dataclass(frozen=True)
class Head:
    """One dense prediction head.

    fixed_channels: names of its first channels; ray_channels: the name of the n_rays
    channels that follow them (`dist` for star: dist_0 .. dist_{n_rays-1}), None for none.
    targets(labels (Y, X) int32 [, n_rays]) -> float32 (C, Y, X), n_rays passed to ray heads
    only; activation(raw (B, C, H, W) tensor) -> maps of the same shape;
    loss(raw, target (B, C, H, W) tensors) -> scalar tensor. ray_scale multiplies the raw
    ray outputs (the network predicts rays in units of ray_scale px). turn_back(maps (B, C,
    H, W) of a flipped/rotated input with the pixels moved back, k, flip) -> the channels
    turned back too (test-time augmentation, `inference.tta`); None: maps of scalars.
    """

    name: str
    fixed_channels: tuple[str, ...]
    targets: Lazy
    activation: Lazy
    loss: Lazy
    ray_channels: str | None = None
    ray_scale: float = 1.0
    turn_back: Lazy | None = None

    def channels(self, n_rays: int = 32) -> int:
        """Number of channels of this head's map."""
        return len(self.fixed_channels) + (n_rays if self.ray_channels else 0)

    def channel_names(self, n_rays: int = 32) -> list[str]:
        """Names of the channels of this head's map, in order."""
        rays = [f"{self.ray_channels}_{k}" for k in range(n_rays)] if self.ray_channels else []
        return [*self.fixed_channels, *rays]

    def channel_range(self) -> tuple[int, int | None]:
        """(fewest, most) channels a map of this head may have; most is None for ray heads."""
        fixed = len(self.fixed_channels)
        return (fixed + MIN_RAYS, None) if self.ray_channels else (fixed, fixed)

    def out_scale(self, n_rays: int = 32) -> tuple[float, ...]:
        """Factor on each raw output channel: ray_scale on rays, 1 elsewhere."""
        rays = (self.ray_scale,) * n_rays if self.ray_channels else ()
        return (1.0,) * len(self.fixed_channels) + rays


@dataclass(frozen=True)
class Threshold:
    """A decoding threshold: its default, the coarse grid tuning tries, the fine step."""

    default: float
    coarse: tuple[float, ...]
    fine_step: float


@dataclass(frozen=True)
class Mode:
    """One decoding mode.

    heads: the heads whose maps it decodes; decoder(maps {head: float32 (C, Y, X)},
    **thresholds) -> int32 (Y, X) labels; cached_decoder(maps, settings) -> a function of
    one setting {threshold: value} (each of `settings`) -> labels that shares the expensive
    steps between settings (None: tuning calls `decoder` per setting); thresholds: the
    decoder's keyword arguments; tuned_after: a mode whose tuned thresholds this one starts
    from, its own coarse grid leaving them out.
    """

    name: str
    heads: tuple[str, ...]
    decoder: Lazy
    thresholds: Mapping[str, Threshold]
    cached_decoder: Lazy | None = None
    tuned_after: str | None = None

    @property
    def defaults(self) -> dict[str, float]:
        """{threshold: default value}."""
        return {name: t.default for name, t in self.thresholds.items()}

    @property
    def coarse_grid(self) -> dict[str, tuple[float, ...]]:
        """{threshold: values} of the coarse search (thresholds of `tuned_after` excluded)."""
        inherited = mode_spec(self.tuned_after).thresholds if self.tuned_after else {}
        return {name: t.coarse for name, t in self.thresholds.items() if name not in inherited}

    @property
    def fine_steps(self) -> dict[str, float]:
        """{threshold: step} of the fine search (best +- one step)."""
        return {name: t.fine_step for name, t in self.thresholds.items()}


def _ref(module: str, function: str) -> Lazy:
    return Lazy(f"cellvit_cli.{module}:{function}")


_HEADS = (
    Head("star", ("prob",), _ref("targets.star", "star_targets"),
         _ref("modeling.heads", "prob_and_rays"), _ref("training.losses", "star_loss"),
         ray_channels="dist", ray_scale=10.0,  # rays in units of 10 px: raw outputs near 1
         turn_back=_ref("inference.tta", "turn_back_rays")),
    Head("flow", ("prob", "dy", "dx"), _ref("targets.flow", "flow_targets"),
         _ref("modeling.heads", "prob_and_flows"), _ref("training.losses", "flow_loss"),
         turn_back=_ref("inference.tta", "turn_back_flows")),
    Head("boundary", ("fg", "boundary"), _ref("targets.boundary", "boundary_targets"),
         _ref("modeling.heads", "probabilities"), _ref("training.losses", "boundary_loss")),
)

_PROB = Threshold(0.5, (0.3, 0.4, 0.5, 0.6, 0.7), 0.05)
_STAR = {"prob_thresh": _PROB, "nms_thresh": Threshold(0.4, (0.2, 0.3, 0.4, 0.5), 0.05)}
_FLOW = {"prob_thresh": _PROB,  # flow_thresh 0 skips the flow check
         "flow_thresh": Threshold(0.4, (0.0, 0.2, 0.4, 0.6, 0.8), 0.1)}
_BOUNDARY = {"fg_thresh": Threshold(0.5, (0.3, 0.4, 0.5, 0.6, 0.7), 0.05),
             "boundary_thresh": Threshold(0.3, (0.1, 0.2, 0.3, 0.4, 0.5, 0.6), 0.05)}

_MODES = (  # in the order `postprocess.auto_mode` prefers them when no mode was tuned
    Mode("star", ("star",), _ref("postprocess.star", "decode_star_maps"), _STAR,
         _ref("postprocess.star", "cached_star_decoder")),
    Mode("flow", ("flow",), _ref("postprocess.flow", "decode_flow_maps"), _FLOW,
         _ref("postprocess.flow", "cached_flow_decoder")),
    Mode("boundary", ("boundary",), _ref("postprocess.boundary", "decode_boundary_maps"),
         _BOUNDARY),
    Mode("fused", ("star", "boundary"), _ref("postprocess.fused", "decode_fused_maps"),
         {**_STAR, **_BOUNDARY}, _ref("postprocess.fused", "cached_fused_decoder"),
         tuned_after="star"),
)

HEADS: tuple[str, ...] = tuple(h.name for h in _HEADS)
MODES: tuple[str, ...] = tuple(m.name for m in _MODES)
_HEAD_BY_NAME = {h.name: h for h in _HEADS}
_MODE_BY_NAME = {m.name: m for m in _MODES}


def head_spec(name: str) -> Head:
    """The head called `name`; ValueError naming the choices for an unknown one."""
    if name not in _HEAD_BY_NAME:
        raise ValueError(f"unknown head {name!r}: choose from {HEADS}")
    return _HEAD_BY_NAME[name]


def mode_spec(name: str) -> Mode:
    """The mode called `name`; ValueError naming the choices for an unknown one."""
    if name not in _MODE_BY_NAME:
        raise ValueError(f"unknown mode {name!r}: choose from {MODES}")
    return _MODE_BY_NAME[name]


def head_channels(head: str, n_rays: int = 32) -> int:
    """Number of channels of `head`'s map."""
    return head_spec(head).channels(n_rays)
