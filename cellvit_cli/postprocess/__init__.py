"""Decoding of dense maps into instance labels: one module per head, plus `fused`.

`decode(maps, mode, thresholds)` is the one entry point; maps have the layout of
docs/architecture.md ({head: float32 (C, Y, X)}), thresholds the format of a model
folder's thresholds.json ({mode: {name: value}, ..., "default_mode": mode}).
"""

from collections.abc import Mapping, Sequence

import numpy as np

from cellvit_cli.postprocess.boundary import decode_boundary
from cellvit_cli.postprocess.checks import as_float_map
from cellvit_cli.postprocess.flow import decode_flow
from cellvit_cli.postprocess.fused import decode_fused
from cellvit_cli.postprocess.star import decode_star

MODES = ("star", "flow", "boundary", "fused")
REQUIRED_HEADS = {"star": ("star",), "flow": ("flow",), "boundary": ("boundary",),
                  "fused": ("star", "boundary")}
DEFAULT_THRESHOLDS = {
    "star": {"prob_thresh": 0.5, "nms_thresh": 0.4},
    "flow": {"prob_thresh": 0.5, "flow_thresh": 0.4},
    "boundary": {"fg_thresh": 0.5, "boundary_thresh": 0.3},
    "fused": {"prob_thresh": 0.5, "nms_thresh": 0.4, "fg_thresh": 0.5, "boundary_thresh": 0.3},
}
AUTO_PREFERENCE = ("star", "flow", "boundary", "fused")  # used when no default_mode is tuned
_MIN_CHANNELS = {"star": 4, "flow": 3, "boundary": 2}
_MAX_CHANNELS = {"star": None, "flow": 3, "boundary": 2}


def required_heads(mode: str) -> tuple[str, ...]:
    """The heads whose maps `mode` decodes."""
    if mode not in REQUIRED_HEADS:
        raise ValueError(f"unknown mode {mode!r}: choose from {MODES}")
    return REQUIRED_HEADS[mode]


def mode_thresholds(mode: str, thresholds: Mapping | None = None) -> dict[str, float]:
    """`thresholds[mode]` over the defaults of `mode`; ValueError on an unknown name."""
    required_heads(mode)  # validates the mode
    defaults = DEFAULT_THRESHOLDS[mode]
    given = dict((thresholds or {}).get(mode) or {})
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown threshold(s) {sorted(unknown)} for mode {mode!r}: "
                         f"expected {sorted(defaults)}")
    return {**defaults, **{k: None if v is None else float(v) for k, v in given.items()}}


def available_modes(heads: Sequence[str]) -> list[str]:
    """The modes, in MODES order, whose heads are all among `heads`."""
    return [mode for mode in MODES if set(REQUIRED_HEADS[mode]) <= set(heads)]


def auto_mode(heads: Sequence[str], thresholds: Mapping | None = None) -> str:
    """The mode to decode with: thresholds["default_mode"] if its heads are all present,
    else the first mode of AUTO_PREFERENCE whose heads are."""
    default = (thresholds or {}).get("default_mode")
    candidates = ((default,) if default in REQUIRED_HEADS else ()) + AUTO_PREFERENCE
    available = available_modes(heads)
    for mode in candidates:
        if mode in available:
            return mode
    raise ValueError(f"no decoding mode for heads {sorted(heads)}: need one of "
                     f"{sorted({h for hs in REQUIRED_HEADS.values() for h in hs})}")


def check_maps(maps: Mapping[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """The maps `mode` needs, as float32 (C, Y, X) arrays of one (Y, X); ValueError otherwise."""
    missing = [head for head in required_heads(mode) if head not in maps]
    if missing:
        raise ValueError(f"mode {mode!r} needs the {'/'.join(required_heads(mode))} head map(s); "
                         f"missing {missing}, got {sorted(maps)}")
    checked = {head: as_float_map(maps[head], 3, f"maps[{head!r}]")
               for head in required_heads(mode)}
    shapes = {head: m.shape[1:] for head, m in checked.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"maps differ in (Y, X): {shapes}")
    for head, m in checked.items():
        low, high = _MIN_CHANNELS[head], _MAX_CHANNELS[head]
        if m.shape[0] < low or (high is not None and m.shape[0] > high):
            raise ValueError(f"maps[{head!r}] has {m.shape[0]} channels, expected "
                             f"{low if high == low else f'at least {low}'}")
    return checked


def decode(maps: Mapping[str, np.ndarray], mode: str,
           thresholds: Mapping | None = None) -> np.ndarray:
    """Instance labels from dense maps.

    maps: {head: float32 (C, Y, X)} (extra heads are ignored); mode: one of MODES;
    thresholds: thresholds.json-style dict, missing names take DEFAULT_THRESHOLDS.
    Returns int32 (Y, X), 0 = background, objects 1..N.
    """
    maps = check_maps(maps, mode)
    th = mode_thresholds(mode, thresholds)
    if mode == "star":
        return decode_star(maps["star"][0], maps["star"][1:], **th)
    if mode == "flow":
        return decode_flow(maps["flow"][0], maps["flow"][1:], **th)
    if mode == "boundary":
        return decode_boundary(maps["boundary"][0], maps["boundary"][1], **th)
    star, boundary = maps["star"], maps["boundary"]
    return decode_fused(star[0], star[1:], boundary[0], boundary[1], **th)
