"""Dense prediction heads and the activation that turns their raw outputs into maps.

Raw outputs and activated maps have the channel layout of docs/architecture.md:
star = [prob, dist x n_rays], flow = [prob, dy, dx], boundary = [fg, boundary].
"""

import torch
from torch import nn

from cellvit_cli.targets import head_channels

DIST_SCALE = 10.0  # the star head predicts ray lengths in units of 10 px, kept near 1


def head_trunk(channels: int) -> nn.Sequential:
    """3x3 conv + GELU, (B, channels, H, W) -> same: the start of every head, or one trunk
    that all heads share."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU())


class DenseHead(nn.Module):
    """[3x3 conv + GELU] + 1x1 conv: (B, in_channels, H, W) -> (B, out_channels, H, W).

    Without `own_trunk` the head is the 1x1 conv alone (it sits on a shared trunk).
    """

    def __init__(self, in_channels: int, out_channels: int, out_scale: torch.Tensor | None = None,
                 own_trunk: bool = True):
        super().__init__()
        layers = [*head_trunk(in_channels)] if own_trunk else []
        self.body = nn.Sequential(*layers, nn.Conv2d(in_channels, out_channels, 1))
        self.register_buffer("out_scale", out_scale if out_scale is not None
                             else torch.ones(out_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * self.out_scale.view(1, -1, 1, 1)


def build_head(head: str, in_channels: int, n_rays: int, own_trunk: bool = True) -> DenseHead:
    """The head named `head` ('star', 'flow' or 'boundary') on `in_channels` features."""
    channels = head_channels(head, n_rays)
    scale = torch.ones(channels)
    if head == "star":
        scale[1:] = DIST_SCALE  # raw star output is [prob logit, dist in px]
    return DenseHead(in_channels, channels, scale, own_trunk)


def activate(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw head outputs -> dense maps: sigmoid on probabilities, rays clamped at 0, flows as is."""
    maps = {}
    for head, out in raw.items():
        if head == "star":
            maps[head] = torch.cat([out[:, :1].sigmoid(), out[:, 1:].clamp_min(0)], dim=1)
        elif head == "flow":
            maps[head] = torch.cat([out[:, :1].sigmoid(), out[:, 1:]], dim=1)
        else:
            maps[head] = out.sigmoid()
    return maps
