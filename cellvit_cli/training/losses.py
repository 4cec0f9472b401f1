"""Per-head losses on raw outputs against targets in the dense-map layout (each head's
entry in `cellvit_cli.registry` names its loss here)."""

import torch
import torch.nn.functional as F

from cellvit_cli.registry import head_spec

DIST_WEIGHT = 0.1    # star: L1 on rays (px), weighted by the object probability
FLOW_WEIGHT = 12.5   # flow: cellpose's MSE on 5x flows, halved
BOUNDARY_POS_WEIGHT = 2.0


def star_loss(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on the object probability + prob-weighted mean L1 of ray lengths (px)."""
    prob = target[:, :1]
    bce = F.binary_cross_entropy_with_logits(raw[:, :1], prob)
    weights = prob.expand_as(raw[:, 1:])
    l1 = ((raw[:, 1:] - target[:, 1:]).abs() * weights).sum() / weights.sum().clamp_min(1e-6)
    return bce + DIST_WEIGHT * l1


def flow_loss(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on the cell probability + MSE of the (dy, dx) flows."""
    bce = F.binary_cross_entropy_with_logits(raw[:, :1], target[:, :1])
    return bce + FLOW_WEIGHT * F.mse_loss(raw[:, 1:], target[:, 1:])


def boundary_loss(raw: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE on the foreground + BCE on the boundary (positives up-weighted: they are thin)."""
    fg = F.binary_cross_entropy_with_logits(raw[:, :1], target[:, :1])
    pos_weight = torch.tensor(BOUNDARY_POS_WEIGHT, device=raw.device)
    boundary = F.binary_cross_entropy_with_logits(raw[:, 1:], target[:, 1:], pos_weight=pos_weight)
    return fg + boundary


def total_loss(raw: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the heads' losses (each head's from the registry), and each head's loss as a
    float for logging."""
    parts = {head: head_spec(head).loss(raw[head].float(), targets[head]) for head in raw}
    return sum(parts.values()), {head: float(v.detach()) for head, v in parts.items()}
