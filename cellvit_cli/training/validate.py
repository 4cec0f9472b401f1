"""Validation during training: whole-image prediction and AP@0.5 per decoding mode."""

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellvit_cli.metrics import average_precision
from cellvit_cli.modeling import CellViT, activate
from cellvit_cli.postprocess import decode, required_heads
from cellvit_cli.training.data import Sample


@torch.inference_mode()
def predict_maps(model: CellViT, image: np.ndarray, device: torch.device) -> dict[str, np.ndarray]:
    """Dense maps {head: float32 (C, Y, X)} of one normalised (C, Y, X) image, in one pass.

    The image is padded (reflect) to a multiple of `model.size_multiple`. For images too
    large for one pass, use `cellvit_cli.inference`, which tiles.
    """
    m = model.size_multiple
    y, x = image.shape[-2:]
    pad = (0, -x % m, 0, -y % m)
    batch = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    mode = "reflect" if min(y, x) > max(pad) else "replicate"
    batch = F.pad(batch, pad, mode=mode) if any(pad) else batch
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        maps = activate(model(batch))
    return {h: v[0, :, :y, :x].float().cpu().numpy() for h, v in maps.items()}


def modes_for(heads: Sequence[str]) -> list[str]:
    """Decoding modes that the given heads allow, in the postprocess module's order."""
    from cellvit_cli.postprocess import MODES

    return [m for m in MODES if set(required_heads(m)) <= set(heads)]


def validation_maps(model: CellViT, samples: Sequence[Sample], device: torch.device
                    ) -> list[dict[str, np.ndarray]]:
    was_training = model.training
    model.eval()
    try:
        return [predict_maps(model, s.image, device) for s in samples]
    finally:
        model.train(was_training)


def validation_scores(maps: Sequence[dict], samples: Sequence[Sample], modes: Sequence[str],
                      thresholds: dict | None = None) -> dict[str, float]:
    """{mode: pooled DSB-style AP@0.5} of decoded `maps` against the samples' labels."""
    gts = [s.labels for s in samples]
    return {mode: average_precision(gts, [decode(m, mode, thresholds) for m in maps], 0.5)
            for mode in modes}
