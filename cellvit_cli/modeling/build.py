"""Named model variants and the one builder: the only place hyper-parameters live."""

from dataclasses import dataclass

from cellvit_cli.modeling.decoder import ConvStem, UNetDecoder
from cellvit_cli.modeling.heads import build_head, head_trunk
from cellvit_cli.modeling.model import CellViT
from cellvit_cli.modeling.vit import ViTEncoder


@dataclass(frozen=True)
class Variant:
    """Architecture of one named variant."""

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    out_indices: tuple[int, ...]
    stem_channels: tuple[int, ...]  # one per stride s, 2s, 4s, ..., patch_size / 2
    head_stride: int = 1            # s: the stride the heads predict at (maps upsampled to 1)
    shared_trunk: bool = False      # one 3x3 conv for all heads instead of one per head


VARIANTS: dict[str, Variant] = {
    # Seconds to train a few steps: for tests and smoke runs, not for accuracy.
    "vit_nano_p16": Variant(16, 64, 2, 2, (0, 1), (8, 16, 16, 32)),
    # Trains on CPU: ~4.4 M parameters; narrow full-resolution stages keep it fast there.
    "vit_tiny_p16": Variant(16, 192, 8, 3, (3, 5, 7), (16, 32, 64, 96)),
    # vit_tiny_p16 with one head trunk shared by the three heads (issue 11 candidates).
    "vit_tiny_p16_shared": Variant(16, 192, 8, 3, (3, 5, 7), (16, 32, 64, 96), 1, True),
    # ... heads at stride 2 on 32 channels, no stride-1 convolution at all.
    "vit_tiny_p16_s2": Variant(16, 192, 8, 3, (3, 5, 7), (32, 64, 96), 2, False),
    "vit_tiny_p16_s2_shared": Variant(16, 192, 8, 3, (3, 5, 7), (32, 64, 96), 2, True),
    # Lighter still (issue 11, third round): heads at stride 4, and 6 blocks instead of 8.
    "vit_tiny_p16_s4": Variant(16, 192, 8, 3, (3, 5, 7), (64, 96), 4, False),
    "vit_tiny_p16_s4_d6": Variant(16, 192, 6, 3, (1, 3, 5), (64, 96), 4, False),
    # Finer tokens, slower: for small objects.
    "vit_tiny_p8": Variant(8, 192, 8, 3, (3, 5, 7), (32, 48, 96)),
    # For a GPU: ~25 M parameters.
    "vit_small_p16": Variant(16, 384, 12, 6, (5, 8, 11), (32, 64, 96, 128)),
}


def build_model(variant: str, heads: tuple[str, ...], in_channels: int = 1,
                n_rays: int = 32) -> CellViT:
    """Build the named `variant` with the given heads ('star', 'flow', 'boundary')."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose from {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    if v.head_stride * 2 ** (len(v.stem_channels) - 1) * 2 != v.patch_size:
        raise ValueError(f"variant {variant!r}: stem strides must reach patch_size / 2")
    encoder = ViTEncoder(in_channels, v.patch_size, v.embed_dim, v.depth, v.num_heads,
                         v.out_indices)
    stem = ConvStem(in_channels, v.stem_channels, first_stride=v.head_stride)
    decoder = UNetDecoder(v.embed_dim, len(v.out_indices), v.stem_channels)
    width = v.stem_channels[0]
    trunk = head_trunk(width) if v.shared_trunk else None
    head_modules = {h: build_head(h, width, n_rays, own_trunk=not v.shared_trunk) for h in heads}
    return CellViT(encoder, stem, decoder, head_modules, trunk, v.head_stride)
