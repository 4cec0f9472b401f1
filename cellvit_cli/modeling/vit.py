"""A plain Vision Transformer encoder that returns NCHW feature maps from several depths."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention on (B, N, D) tokens with `scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """Patch embedding, learned position embeddings and pre-norm blocks.

    Input (B, in_channels, H, W) with H, W multiples of `patch_size`. Output: one feature map
    (B, embed_dim, H / patch_size, W / patch_size) per index in `out_indices` (block depths,
    0-based). Position embeddings are learned on a `pos_grid` x `pos_grid` grid and
    interpolated bicubically to any other grid.
    """

    def __init__(self, in_channels: int, patch_size: int, embed_dim: int, depth: int,
                 num_heads: int, out_indices: Sequence[int], pos_grid: int = 16):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.out_indices = tuple(out_indices)
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.randn(1, embed_dim, pos_grid, pos_grid) * 0.02)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, embed_dim, gy, gx) position embeddings for a token grid of size `grid`."""
        if tuple(self.pos_embed.shape[-2:]) == grid:
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=grid, mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.patch_embed(x)
        b, d, gy, gx = tokens.shape
        tokens = (tokens + self.position_embedding((gy, gx))).flatten(2).transpose(1, 2)
        features = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in self.out_indices:
                out = self.norm(tokens) if i == len(self.blocks) - 1 else tokens
                features.append(out.transpose(1, 2).reshape(b, d, gy, gx))
        return features
