"""Inference: tiling and stitching, batched prediction, the object-size estimate, block
mode, the segment pipeline behind `cellvit segment`.

The file pipeline (`segment_paths`, `SegmentReport`: exports, block mode) is imported on
first use, so that the network's parts (`Predictor`, e.g. for validation during training)
come without it.
"""

from cellvit_cli.device import resolve_device
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.inference.segmenter import (Segmenter, SegmentSettings, segment_array,
                                             segment_array_with_size)
from cellvit_cli.inference.sizing import SizeEstimate, estimate_zoom
from cellvit_cli.inference.tiling import Stitcher, plan_tiles, stitch

_PIPELINE_NAMES = ("SegmentReport", "segment_paths")

__all__ = ["DenseNetwork", "Predictor", "SegmentReport", "SegmentSettings", "Segmenter",
           "SizeEstimate", "Stitcher", "estimate_zoom", "plan_tiles", "resolve_device",
           "segment_array", "segment_array_with_size", "segment_paths", "stitch"]


def __getattr__(name: str):
    """`segment_paths` and `SegmentReport`, from `pipeline` when first asked for."""
    if name in _PIPELINE_NAMES:
        from cellvit_cli.inference import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
