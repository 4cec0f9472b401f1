"""Dense prediction heads and the activation that turns their raw outputs into maps.

Raw outputs and activated maps have the channel layout of docs/architecture.md:
star = [prob, dist x n_rays], flow = [prob, dy, dx], boundary = [fg, boundary].
"""

import torch
from torch import nn

from cellvit_cli.registry import head_spec


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
    """The head named `head` (see `cellvit_cli.registry`) on `in_channels` features."""
    spec = head_spec(head)
    return DenseHead(in_channels, spec.channels(n_rays), torch.tensor(spec.out_scale(n_rays)),
                     own_trunk)


def activate(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Raw head outputs (B, C, H, W) -> dense maps, each by its head's activation."""
    return {head: head_spec(head).activation(out) for head, out in raw.items()}


# ---- activations, named by the heads' registry entries ------------------------------------

def prob_and_rays(raw: torch.Tensor) -> torch.Tensor:
    """Sigmoid on channel 0 (a probability logit), the rest (ray lengths) clamped at 0."""
    return torch.cat([raw[:, :1].sigmoid(), raw[:, 1:].clamp_min(0)], dim=1)


def prob_and_flows(raw: torch.Tensor) -> torch.Tensor:
    """Sigmoid on channel 0 (a probability logit), the rest (flows) as they are."""
    return torch.cat([raw[:, :1].sigmoid(), raw[:, 1:]], dim=1)


def probabilities(raw: torch.Tensor) -> torch.Tensor:
    """Sigmoid on every channel (each a probability logit)."""
    return raw.sigmoid()
