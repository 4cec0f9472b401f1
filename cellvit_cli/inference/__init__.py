"""Inference: device choice, tiling and stitching, batched prediction, the object-size
estimate, block mode, the segment pipeline behind `cellvit segment`."""

from cellvit_cli.device import resolve_device
from cellvit_cli.inference.pipeline import SegmentReport, segment_paths
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.inference.segmenter import (Segmenter, SegmentSettings, segment_array,
                                             segment_array_with_size)
from cellvit_cli.inference.sizing import SizeEstimate, estimate_zoom
from cellvit_cli.inference.tiling import Stitcher, plan_tiles, stitch

__all__ = ["DenseNetwork", "Predictor", "SegmentReport", "SegmentSettings", "Segmenter",
           "SizeEstimate", "Stitcher", "estimate_zoom", "plan_tiles", "resolve_device",
           "segment_array", "segment_array_with_size", "segment_paths", "stitch"]
