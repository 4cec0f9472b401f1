"""Test-time augmentation: a network's maps over the 8 flips and 90-degree rotations of its
input, each turned back to the input's frame and averaged.

Turning maps back is more than moving pixels: flow vectors (dy, dx) turn with the image,
and star rays change places (ray j of `stardist.star_dist`'s compiled code points along
(dy, dx) = (sin, cos) of 2 pi j / n_rays: a counter-clockwise quarter turn moves ray j to
j - n_rays / 4, a flip of X to n_rays / 2 - j; tests/test_tta.py checks this on real targets). Averaging over the whole group makes the prediction exactly equivariant:
the maps of a rotated image are the rotated maps.
"""

import torch
from torch import nn

from cellvit_cli.registry import head_spec

# (k, flip): rotate by k * 90 degrees counter-clockwise (torch/np.rot90) after flipping X
DIHEDRAL = tuple((k, flip) for flip in (False, True) for k in range(4))


def transform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """(..., H, W) -> its flip of X (if `flip`), rotated by k * 90 degrees."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, (-2, -1))


def untransform(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of `transform` on the pixels of (..., H, W)."""
    x = torch.rot90(x, -k, (-2, -1))
    return x.flip(-1) if flip else x


def turn_back_flows(flow: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """(B, 3, H, W) flow maps [prob, dy, dx] predicted on a transformed image, pixels already
    moved back: the vectors turned back to the input's frame."""
    dy, dx = flow[:, 1], flow[:, 2]
    for _ in range(k % 4):  # undo (dy, dx) -> (-dx, dy) of each counter-clockwise turn
        dy, dx = dx, -dy
    if flip:
        dx = -dx
    return torch.stack([flow[:, 0], dy, dx], dim=1)


def turn_back_rays(star: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """(B, 1 + n_rays, H, W) star maps [prob, rays] of a transformed image, pixels already
    moved back: ray j of the input is ray ([n_rays / 2 - j if flip] - k n_rays / 4) mod
    n_rays of the transform."""
    n_rays = star.shape[1] - 1
    j = torch.arange(n_rays, device=star.device)
    order = ((n_rays // 2 - j if flip else j) - k * n_rays // 4) % n_rays
    return torch.cat([star[:, :1], star[:, 1:][:, order]], dim=1)


def turns_for(maps_channels: dict[str, int]) -> tuple[tuple[int, bool], ...]:
    """The transforms whose maps can be turned back: all 8; a half turn and flips when the
    rays of a ray head (star) divide into halves but not quarters; else the identity."""
    rays = [channels - len(head_spec(head).fixed_channels)
            for head, channels in maps_channels.items() if head_spec(head).ray_channels]
    if all(n % 4 == 0 for n in rays):
        return DIHEDRAL
    if all(n % 2 == 0 for n in rays):
        return tuple(t for t in DIHEDRAL if t[0] % 2 == 0)
    return DIHEDRAL[:1]


class TTANetwork(nn.Module):
    """`network` (x -> {head: activated maps (B, C, H, W)}) averaged over the dihedral group.

    Square tiles keep their shape under every transform; costs len(turns) network passes.
    """

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    @property
    def size_multiple(self) -> int:
        return self.network.size_multiple

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        total = {head: m.float() for head, m in self.network(x).items()}  # the identity
        turns = turns_for({head: m.shape[1] for head, m in total.items()})
        for k, flip in turns[1:]:
            for head, m in self.network(transform(x, k, flip)).items():
                m = untransform(m.float(), k, flip)
                turn_back = head_spec(head).turn_back
                total[head] += turn_back(m, k, flip) if turn_back else m
        return {head: m / len(turns) for head, m in total.items()}
