"""The model: an encoder, a stem, a decoder and heads that were built elsewhere."""

import torch
from torch import nn

from cellvit_cli.modeling.decoder import ConvStem, UNetDecoder
from cellvit_cli.modeling.vit import ViTEncoder


class CellViT(nn.Module):
    """ViT encoder + conv stem -> U-shaped decoder -> one dense head per name.

    forward: (B, C, H, W) float32, H and W multiples of `size_multiple` ->
    {head: raw output (B, C_head, H, W)}; `modeling.activate` turns these into maps.
    """

    def __init__(self, encoder: ViTEncoder, stem: ConvStem, decoder: UNetDecoder,
                 heads: dict[str, nn.Module]):
        super().__init__()
        self.encoder = encoder
        self.stem = stem
        self.decoder = decoder
        self.heads = nn.ModuleDict(heads)

    @property
    def size_multiple(self) -> int:
        return self.encoder.patch_size

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.decoder(self.encoder(x), self.stem(x))
        return {name: head(features) for name, head in self.heads.items()}
