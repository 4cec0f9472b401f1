"""Validation during training: dense maps as `segment` makes them, AP@0.5 per decoding mode."""

from collections.abc import Sequence

import numpy as np
import torch

from cellvit_cli.device import default_batch_size
from cellvit_cli.inference.predictor import DenseNetwork, Predictor
from cellvit_cli.inference.segmenter import SegmentSettings
from cellvit_cli.metrics import average_precision
from cellvit_cli.modeling import CellViT
from cellvit_cli.postprocess import decode
from cellvit_cli.training.data import Sample


def validation_maps(model: CellViT, samples: Sequence[Sample], device: torch.device
                    ) -> list[dict[str, np.ndarray]]:
    """Dense maps of every sample, tiled and stitched exactly as `cellvit segment` does, so
    thresholds tuned on them hold for segmentation."""
    predictor = Predictor(DenseNetwork(model, tuple(model.heads)), device=device,
                          batch_size=default_batch_size(device),
                          tile_size=SegmentSettings.tile_size, overlap=SegmentSettings.overlap)
    was_training = model.training
    model.eval()
    try:
        maps = dict(predictor.predict_stream((i, s.image) for i, s in enumerate(samples)))
    finally:
        model.train(was_training)
    return [maps[i] for i in range(len(samples))]


def validation_scores(maps: Sequence[dict], samples: Sequence[Sample], modes: Sequence[str],
                      thresholds: dict | None = None) -> dict[str, float]:
    """{mode: pooled DSB-style AP@0.5} of decoded `maps` against the samples' labels."""
    gts = [s.labels for s in samples]
    return {mode: average_precision(gts, [decode(m, mode, thresholds) for m in maps], 0.5)
            for mode in modes}
