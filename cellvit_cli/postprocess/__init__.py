"""Decoding of dense maps into instance labels: one module per head, plus `fused`.

`decode(maps, mode, thresholds)` is the one entry point; maps have the layout of
docs/architecture.md ({head: float32 (C, Y, X)}), thresholds the format of a model
folder's thresholds.json ({mode: {name: value}, ..., "default_mode": mode}). Each mode's
heads, decoder and default thresholds are its entry in `cellvit_cli.registry`; the decoder
modules are imported on the first decoding that needs them.
"""

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from cellvit_cli.postprocess.checks import as_float_map
from cellvit_cli.registry import MODES, head_spec, mode_spec

DEFAULT_THRESHOLDS = {mode: mode_spec(mode).defaults for mode in MODES}  # {mode: {name: value}}


def required_heads(mode: str) -> tuple[str, ...]:
    """The heads whose maps `mode` decodes; ValueError for an unknown mode."""
    return mode_spec(mode).heads


def mode_thresholds(mode: str, thresholds: Mapping | None = None) -> dict[str, float]:
    """`thresholds[mode]` over the defaults of `mode`; ValueError on an unknown name."""
    defaults = mode_spec(mode).defaults
    given = dict((thresholds or {}).get(mode) or {})
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(f"unknown threshold(s) {sorted(unknown)} for mode {mode!r}: "
                         f"expected {sorted(defaults)}")
    return {**defaults, **{k: None if v is None else float(v) for k, v in given.items()}}


def available_modes(heads: Sequence[str]) -> list[str]:
    """The modes, in MODES order, whose heads are all among `heads`."""
    return [mode for mode in MODES if set(required_heads(mode)) <= set(heads)]


def auto_mode(heads: Sequence[str], thresholds: Mapping | None = None) -> str:
    """The mode to decode with: thresholds["default_mode"] if its heads are all present,
    else the first mode of MODES (their order is the preference) whose heads are."""
    default = (thresholds or {}).get("default_mode")
    candidates = ((default,) if default in MODES else ()) + MODES
    available = available_modes(heads)
    for mode in candidates:
        if mode in available:
            return mode
    raise ValueError(f"no decoding mode for heads {sorted(heads)}: need one of "
                     f"{sorted({h for m in MODES for h in required_heads(m)})}")


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
        low, high = head_spec(head).channel_range()
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
    return mode_spec(mode).decoder(maps, **mode_thresholds(mode, thresholds))


def cached_decoder(maps: Mapping[str, np.ndarray], mode: str,
                   settings: Sequence[Mapping[str, float]]
                   ) -> Callable[[Mapping[str, float]], np.ndarray]:
    """A decoder of one image's maps (checked by `check_maps`) for each of `settings` (every
    threshold of `mode` given): setting -> int32 (Y, X) labels, sharing the expensive steps
    between settings where the mode has a cached decoder (star NMS, flow following)."""
    spec = mode_spec(mode)
    if spec.cached_decoder is not None:
        return spec.cached_decoder(maps, settings)
    return lambda th: spec.decoder(maps, **th)
