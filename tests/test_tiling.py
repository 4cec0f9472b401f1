"""Tile planning covers every pixel; stitching is exact for an identity network; cells on
tile borders come out whole."""

import numpy as np
import pytest
import torch

from cellvit_cli.inference.predictor import Predictor
from cellvit_cli.inference.tiling import Stitcher, pad_to_tiles, plan_tiles, stitch, tile_shape
from cellvit_cli.metrics import label_overlap, match
from cellvit_cli.postprocess import decode
from cellvit_cli.registry import head_channels
from cellvit_cli.targets import make_targets


class SplitNetwork(torch.nn.Module):
    """Identity network: input channels split into heads, {head: its channels}."""

    def __init__(self, channels: dict[str, int], size_multiple: int = 1):
        super().__init__()
        self.channels, self.size_multiple = channels, size_multiple

    def forward(self, x):
        return dict(zip(self.channels, torch.split(x, list(self.channels.values()), dim=1)))


class TargetNetwork(torch.nn.Module):
    """A perfect network that only sees its tile: the input is a tile of instance labels
    (one channel), the output the training targets of that tile, as a trained model would
    predict them without the context outside the tile."""

    def __init__(self, heads=("star",), n_rays: int = 32, size_multiple: int = 16):
        super().__init__()
        self.heads, self.n_rays, self.size_multiple = tuple(heads), n_rays, size_multiple
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        tiles = [make_targets(t[0].round().long().numpy(), self.heads, self.n_rays) for t in x]
        return {h: torch.from_numpy(np.stack([t[h] for t in tiles])) for h in self.heads}


def same_cells(a: np.ndarray, b: np.ndarray, iou_thresh: float) -> bool:
    """Whether the IoU >= iou_thresh matching of two label images pairs every object."""
    overlap = label_overlap(a, b)
    matched = match(overlap, iou_thresh).iou.size
    return matched == overlap.true_labels.size == overlap.pred_labels.size


def coverage(shape, tiles) -> np.ndarray:
    count = np.zeros(shape, int)
    for ys, xs in tiles:
        count[ys, xs] += 1  # slices past the border are clipped by numpy
    return count


def test_plan_tiles_covers_every_pixel_property():
    rng = np.random.default_rng(0)
    for _ in range(400):
        multiple = int(rng.choice([1, 8, 16]))
        tile_size = multiple * int(rng.integers(max(1, 16 // multiple), 40))
        overlap = int(rng.integers(0, tile_size // 2))
        shape = tuple(int(n) for n in rng.integers(1, 700, size=2))
        tiles = plan_tiles(shape, tile_size, overlap, multiple)
        assert coverage(shape, tiles).min() >= 1
        ty, tx = tile_shape(shape, tile_size, multiple, overlap)
        assert ty % multiple == 0 and tx % multiple == 0 and ty <= tile_size and tx <= tile_size
        for ys, xs in tiles:
            assert (ys.stop - ys.start, xs.stop - xs.start) == (ty, tx)
            assert ys.start >= 0 and xs.start >= 0
            # a tile reaches past the image only when the image is smaller than one tile
            assert ys.stop <= max(shape[0], ty) and xs.stop <= max(shape[1], tx)
        for axis, n in enumerate((ty, tx)):
            starts = sorted({t[axis].start for t in tiles})
            assert all(b - a <= n - min(overlap, n - 1) for a, b in zip(starts, starts[1:]))


def test_tiles_shrink_to_what_covers_the_image():
    assert tile_shape((1024, 1000), 512, 16, 64) == (384, 384)  # 3 x 3 tiles either way
    assert tile_shape((2048, 100), 512, 16, 64) == (464, 112)  # 5 tiles: 5 x 464 - 4 x 64 >= 2048
    tiles = plan_tiles((1024, 1024), 512, 64, 16)
    assert len(tiles) == 9 and tiles[1][1].start == 320  # overlaps of exactly 64


def test_plan_tiles_rejects_bad_arguments():
    with pytest.raises(ValueError):
        plan_tiles((100, 100), 64, 64)
    with pytest.raises(ValueError):
        plan_tiles((100, 100), 60, 8, multiple=16)


@pytest.mark.parametrize("shape", [(1, 1), (37, 200), (256, 256), (300, 517)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_stitching_identity_network_reproduces_input(shape, batch_size):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, *shape)).astype(np.float32)
    network = SplitNetwork({"star": 2, "boundary": 1}, size_multiple=16)
    predictor = Predictor(network, batch_size=batch_size, tile_size=96, overlap=24)
    maps = predictor.predict(image)
    np.testing.assert_allclose(maps["star"], image[:2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(maps["boundary"], image[2:], rtol=1e-6, atol=1e-6)


def test_stitch_function_blends_with_taper():
    tiles = plan_tiles((50, 90), 32, 12)
    pieces = [(t, {"a": np.full((1, 32, 32), float(i), np.float32)}) for i, t in enumerate(tiles)]
    out = stitch(pieces, (50, 90), 12)["a"][0]
    assert out[0, 0] == 0 and out[-1, -1] == len(tiles) - 1  # corners: one tile, full weight
    assert 0 < out[10, 40] < len(tiles) - 1  # inside an overlap: a blend
    with pytest.raises(RuntimeError):
        Stitcher((10, 10), {"a": 1}, 2).result()  # nothing added: pixels without weight


def test_pad_to_tiles_reflects_small_images():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    padded = pad_to_tiles(image, plan_tiles((3, 4), 16, 4, multiple=8))
    assert padded.shape == (1, 8, 8)
    np.testing.assert_array_equal(padded[:, :3, :4], image)


def test_stream_keeps_input_order_across_shared_batches():
    network = SplitNetwork({"star": 1}, size_multiple=8)
    predictor = Predictor(network, batch_size=5, tile_size=64, overlap=16)
    rng = np.random.default_rng(2)
    images = [rng.normal(size=(1, *s)).astype(np.float32)
              for s in [(100, 80), (20, 20), (64, 64), (130, 70), (20, 20)]]
    out = list(predictor.predict_stream(enumerate(images)))
    assert [k for k, _ in out] == list(range(len(images)))
    for (_, maps), image in zip(out, images):
        np.testing.assert_allclose(maps["star"], image, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["star", "boundary"])
def test_cells_on_tile_borders_come_out_whole(nuclei, mode):
    """Untiled targets vs. maps stitched from tiles that each only saw their own tile."""
    _, labels = nuclei
    whole = decode(make_targets(labels, [mode]), mode)
    network = TargetNetwork((mode,))
    predictor = Predictor(network, batch_size=8, tile_size=128, overlap=64)
    tiled = decode(predictor.predict(labels[np.newaxis].astype(np.float32)), mode)
    tiles = predictor.plan(labels.shape)
    # cells that straddle an interior tile edge, where one tile saw them cut
    edges = {t[0].stop for t in tiles if t[0].stop < 512} | {t[1].stop + 512 for t in tiles
                                                            if t[1].stop < 512}
    cut = [i for i in np.unique(whole)[1:] if _crosses(whole == i, edges)]
    assert len(tiles) > 4 and len(cut) > 20
    assert same_cells(whole, tiled, 0.9)


def _crosses(mask: np.ndarray, edges: set[int]) -> bool:
    ys, xs = np.nonzero(mask)
    return any(ys.min() < e <= ys.max() for e in edges if e < 512) or \
        any(xs.min() < e - 512 <= xs.max() for e in edges if e >= 512)


def test_identity_maps_of_real_nuclei_decode_identically(nuclei):
    _, labels = nuclei
    targets = make_targets(labels, ["star"])
    channels = {"star": head_channels("star")}
    predictor = Predictor(SplitNetwork(channels, 16), batch_size=4, tile_size=128, overlap=32)
    stitched = predictor.predict(targets["star"])
    assert same_cells(decode(targets, "star"), decode(stitched, "star"), 0.99)
