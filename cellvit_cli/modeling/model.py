"""The model: an encoder, a stem, a decoder and heads that were built elsewhere."""

import torch
import torch.nn.functional as F
from torch import nn

from cellvit_cli.modeling.decoder import ConvStem, UNetDecoder
from cellvit_cli.modeling.vit import ViTEncoder


class CellViT(nn.Module):
    """ViT encoder + conv stem -> U-shaped decoder -> optional shared trunk -> dense heads.

    forward: (B, C, H, W) float32, H and W multiples of `size_multiple` ->
    {head: raw output (B, C_head, H, W)}; `modeling.activate` turns these into maps.
    With `head_stride` s > 1 (2 or 4) the decoder stops at stride s, the heads predict there
    and their raw outputs are upsampled bilinearly to (H, W) (StarDist predicts on a grid of
    2 too).
    """

    def __init__(self, encoder: ViTEncoder, stem: ConvStem, decoder: UNetDecoder,
                 heads: dict[str, nn.Module], trunk: nn.Module | None = None,
                 head_stride: int = 1):
        super().__init__()
        self.encoder = encoder
        self.stem = stem
        self.decoder = decoder
        self.trunk = trunk if trunk is not None else nn.Identity()
        self.heads = nn.ModuleDict(heads)
        self.head_stride = head_stride

    @property
    def size_multiple(self) -> int:
        return self.encoder.patch_size

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(self.decoder(self.encoder(x), self.stem(x)))
        raw = {name: head(features) for name, head in self.heads.items()}
        if self.head_stride == 1:
            return raw
        return {name: F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
                for name, out in raw.items()}
