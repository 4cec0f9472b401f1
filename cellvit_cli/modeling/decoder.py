"""Convolutional stem and a U-shaped decoder from ViT tokens back to full resolution."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv, batch norm, GELU, then a second 3x3 conv, batch norm, GELU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.GELU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels), nn.GELU())


class ConvStem(nn.Module):
    """Shallow CNN giving full-resolution detail that patch tokens lose.

    Input (B, in_channels, H, W). Output: maps at strides s, 2s, 4s, ... (s = `first_stride`,
    one map per entry of `channels`), map i of shape (B, channels[i], H / (s 2**i), W / (s 2**i)).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], first_stride: int = 1):
        super().__init__()
        ins = [in_channels, *channels[:-1]]
        self.stages = nn.ModuleList(
            conv_block(c_in, c_out, stride=first_stride if i == 0 else 2)
            for i, (c_in, c_out) in enumerate(zip(ins, channels)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps


class UNetDecoder(nn.Module):
    """Fuses ViT feature maps (stride `patch_size`) with stem maps (strides s .. patch_size/2).

    The ViT maps are concatenated and projected, then upsampled by 2 repeatedly; at each
    stride the stem map of that stride is concatenated and refined. Output (B, channels[0],
    H / s, W / s) at the stride s of the first stem map.
    """

    def __init__(self, vit_channels: int, n_vit_maps: int, stem_channels: Sequence[int]):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(vit_channels * n_vit_maps, stem_channels[-1], 1, bias=False),
            nn.BatchNorm2d(stem_channels[-1]), nn.GELU())
        outs = list(stem_channels)
        ins = [c_skip + c_up for c_skip, c_up in zip(outs, outs[1:] + [stem_channels[-1]])]
        self.refine = nn.ModuleList(conv_block(c_in, c_out) for c_in, c_out in zip(ins, outs))

    def forward(self, vit_maps: Sequence[torch.Tensor], stem_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.project(torch.cat(list(vit_maps), dim=1))
        for skip, refine in zip(reversed(stem_maps), reversed(self.refine)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = refine(torch.cat([skip, x], dim=1))
        return x
