"""Inference: device choice, tiling and stitching, batched prediction, block mode, the
segment pipeline behind `cellvit segment`."""

from cellvit_cli.inference.device import resolve_device
from cellvit_cli.inference.pipeline import (SegmentReport, Segmenter, SegmentSettings,
                                            segment_array, segment_paths)
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.inference.tiling import Stitcher, plan_tiles, stitch

__all__ = ["DenseNetwork", "Predictor", "SegmentReport", "SegmentSettings", "Segmenter",
           "Stitcher", "plan_tiles", "resolve_device", "segment_array", "segment_paths", "stitch"]
