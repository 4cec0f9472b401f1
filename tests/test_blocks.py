"""Block mode gives the cells of whole-image mode; regions of TIFFs read without the whole."""

import numpy as np
import pytest
import tifffile

from cellvit_cli.bigtiff import (ArrayRegions, CheckedRegions, TiffRegionReader, retype_tiled,
                                 write_tiled)
from cellvit_cli.inference import block_pipeline
from cellvit_cli.inference.blocks import (Block, check_zoom, halo_for, keep_owned, owned_blocks,
                                          plan_blocks, segment_blocks)
from cellvit_cli.inference.predictor import Predictor
from cellvit_cli.io import InputError, read_image
from cellvit_cli.metrics import label_overlap, match
from cellvit_cli.postprocess import decode
from cellvit_cli.preprocess import RegionSource, prepare
from cellvit_cli.samples import load_nuclei_sample, make_mosaic
from test_tiling import TargetNetwork, same_cells


@pytest.mark.parametrize("shape,block_size,halo", [((1000, 700), 256, 40), ((100, 90), 512, 64),
                                                   ((513, 1025), 256, 0)])
def test_block_cores_tile_the_image(shape, block_size, halo):
    rows = plan_blocks(shape, block_size, halo)
    count = np.zeros(shape, int)
    for row in rows:
        assert len({b.core[0].start for b in row}) == 1  # a row shares its rows
        for block in row:
            count[block.core] += 1
            for core, outer, n in zip(block.core, block.outer, shape):
                assert core.stop - core.start <= block_size
                assert outer.start == max(0, core.start - halo)
                assert outer.stop == min(n, core.stop + halo)
    assert (count == 1).all()


def test_halo_is_wider_than_the_largest_cells():
    assert halo_for(17) >= 3 * 17
    assert halo_for(17, scale=0.5) >= 3 * 34  # cells are twice as large in the input


def test_keep_owned_keeps_cells_whose_centroid_is_in_the_core():
    labels = np.zeros((40, 40), np.int32)
    labels[2:8, 2:8] = 3          # centroid (4.5, 4.5): in the halo
    labels[8:20, 8:14] = 5        # centroid (13.5, 10.5): in the core, reaches into the halo
    labels[30:38, 30:38] = 7      # in the core
    block = Block((slice(10, 50), slice(10, 50)), (slice(0, 40), slice(0, 40)))
    # core_in_outer: rows/cols 10..40 of the outer region
    owned = keep_owned(labels, block)
    assert owned.dtype == np.uint32
    assert set(np.unique(owned)) == {0, 1, 2}
    assert (owned[labels == 5] == 1).all() and (owned[labels == 7] == 2).all()
    assert (owned[labels == 3] == 0).all()


def _mosaic_labels(shape, seed=0) -> np.ndarray:
    image, labels = load_nuclei_sample()
    return make_mosaic(image, labels, shape, seed)[1].astype(np.int32)


def test_block_mode_and_whole_image_mode_give_the_same_cells(tmp_path):
    """Mosaic of real nuclei; a network that only sees its tile (targets of the tile)."""
    labels = _mosaic_labels((900, 1100))
    predictor = Predictor(TargetNetwork(("star",)), batch_size=8, tile_size=256, overlap=64)
    whole = decode(predictor.predict(labels[np.newaxis].astype(np.float32)), "star")

    def predict(outer):
        return predictor.predict(labels[(np.newaxis, *outer)].astype(np.float32))

    blocks = plan_blocks(labels.shape, 384, halo_for(17))
    assert sum(map(len, blocks)) == 9
    out = tmp_path / "labels.tif"
    result = segment_blocks(labels.shape, blocks, predict,
                            lambda maps, outer: decode(maps, "star"), out)
    blocked = tifffile.imread(out)
    assert blocked.dtype == np.uint32 and blocked.shape == labels.shape
    n_whole = len(np.unique(whole)) - 1
    assert result.n_cells == len(np.unique(blocked)) - 1 == n_whole > 400
    assert same_cells(whole, blocked, 0.5)  # nothing lost, nothing doubled
    # The two modes tile differently, so maps differ a little; at IoU 0.9 only slivers of
    # nuclei cut at the mosaic's seams (a few px wide) may miss.
    overlap = label_overlap(whole, blocked)
    matched = match(overlap, 0.9).true_ids
    missed = overlap.true_areas[~np.isin(overlap.true_labels, matched)]
    assert missed.size <= 2 and (missed < 30).all()


def test_a_cell_seen_by_several_blocks_is_kept_once(tmp_path):
    shape = (600, 520)
    rows = plan_blocks(shape, 256, 32)

    def predict(outer):
        return outer

    square = np.zeros(shape, np.int32)
    square[280:320, 240:280] = 1  # one 40 px cell on the corner of four blocks

    def decode_square(outer, _):  # every block whose outer region reaches it finds it
        return square[outer]

    out = tmp_path / "labels.tif"
    result = segment_blocks(shape, rows, predict, decode_square, out)
    labels = tifffile.imread(out)
    assert result.n_cells == 1 and set(np.unique(labels)) == {0, 1}
    assert (labels[280:320, 240:280] == 1).all()


def test_pixels_claimed_by_two_owners_go_to_the_block_written_first(tmp_path):
    shape = (100, 200)
    rows = plan_blocks(shape, 100, 30)  # cores x 0..100 and 100..200, outers 0..130, 70..200
    p_cols, q_cols = slice(80, 115), slice(110, 130)  # P owned by the left block, Q by the right

    def decode_two(outer, _):  # each block draws its own cell first where they overlap
        labels = np.zeros(shape, np.int32)
        order = [(1, p_cols), (2, q_cols)] if outer[1].start == 0 else [(2, q_cols), (1, p_cols)]
        for label, cols in order:
            free = labels[40:60, cols] == 0
            labels[40:60, cols][free] = label
        return labels[outer]

    out = tmp_path / "labels.tif"
    assert segment_blocks(shape, rows, lambda outer: outer, decode_two, out).n_cells == 2
    labels = tifffile.imread(out)
    assert (labels[40:60, 80:115] == 1).all() and (labels[40:60, 115:130] == 2).all()
    assert np.count_nonzero(labels) == 20 * 50


def test_region_source_normalises_like_whole_image_preprocessing():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 100.0, size=(3, 300, 410)).astype(np.uint16)
    source = RegionSource(ArrayRegions(data), in_channels=1, scale=0.5)
    expected = prepare(data, 1, None, 0.5)
    np.testing.assert_allclose(source.read((slice(0, 300), slice(0, 410))), expected,
                               rtol=1e-5, atol=1e-5)
    unzoomed = RegionSource(ArrayRegions(data), in_channels=1)
    part = unzoomed.read((slice(100, 200), slice(7, 410)))
    np.testing.assert_allclose(part, prepare(data, 1)[:, 100:200, 7:410], rtol=1e-5, atol=1e-5)


TIFF_LAYOUTS = {
    "contiguous": ((700, 900), {}),
    "tiled": ((700, 900), {"tile": (256, 256), "compression": "zlib"}),
    "strips": ((700, 900), {"compression": "zlib", "rowsperstrip": 50}),
    "rgb": ((700, 900, 3), {"photometric": "rgb"}),
    "rgb_tiled": ((700, 900, 3), {"photometric": "rgb", "tile": (128, 128), "compression": "zlib"}),
    "planar": ((3, 700, 900), {"photometric": "rgb", "planarconfig": "separate",
                               "compression": "zlib"}),
    "imagej_cyx": ((2, 700, 900), {"imagej": True, "metadata": {"axes": "CYX"}}),
}


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
def test_region_reader_matches_full_read(tmp_path, layout):
    shape, options = TIFF_LAYOUTS[layout]
    data = np.random.default_rng(1).integers(0, 255, shape, dtype=np.uint8)
    path = tmp_path / f"{layout}.tif"
    tifffile.imwrite(path, data, **options)
    cyx = np.moveaxis(data, -1, 0) if layout.startswith("rgb") else (
        data if data.ndim == 3 else data[np.newaxis])
    with TiffRegionReader(path) as reader:
        assert reader.shape == cyx.shape
        for ys, xs in [(slice(0, 700), slice(0, 900)), (slice(13, 400), slice(250, 777)),
                       (slice(699, 700), slice(0, 5))]:
            np.testing.assert_array_equal(reader.read(ys, xs), cyx[:, ys, xs])


def test_region_reader_refuses_stacks(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ValueError):
        TiffRegionReader(path)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1)])
def test_region_reader_reads_images_one_pixel_wide(tmp_path, shape):
    data = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    tifffile.imwrite(tmp_path / "thin.tif", data)
    with TiffRegionReader(tmp_path / "thin.tif") as reader:
        assert reader.shape == (1, *shape)
        np.testing.assert_array_equal(reader.read(slice(0, shape[0]), slice(0, shape[1]))[0],
                                      data)


def test_region_reader_drops_alpha_like_read_image(tmp_path):
    rgba = np.random.default_rng(3).integers(0, 255, (70, 90, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgba, -1, 0), photometric="rgb",
                     planarconfig="separate", tile=(32, 32))
    for name in ("rgba.tif", "planar.tif"):
        whole = read_image(tmp_path / name).data
        with TiffRegionReader(tmp_path / name) as reader:
            assert reader.shape == whole.shape == (3, 70, 90)
            np.testing.assert_array_equal(reader.read(slice(5, 60), slice(0, 90)),
                                          whole[:, 5:60], err_msg=name)


def test_checked_regions_refuse_what_read_image_refuses(tmp_path):
    data = np.ones((3, 80, 60), np.float32)
    data[1, 70:, :] = np.nan  # NaN in channel 1 only
    tifffile.imwrite(tmp_path / "nan.tif", data, photometric="minisblack", planarconfig="separate")
    path = tmp_path / "nan.tif"
    for channel in (None, 1):
        with pytest.raises(InputError, match="NaN") as info:
            RegionSource(CheckedRegions(TiffRegionReader(path), channel), 1)
        assert str(info.value).startswith(f"{path}: ")
        with pytest.raises(InputError, match="NaN"):
            read_image(path, channel)
    checked = CheckedRegions(TiffRegionReader(path), channel=2)  # channel 2 is finite
    assert checked.shape == (1, 80, 60) and RegionSource(checked, 1).read(
        (slice(0, 80), slice(0, 60))).shape == (1, 80, 60)
    with pytest.raises(InputError, match="channel 3 out of range"):
        CheckedRegions(TiffRegionReader(path), channel=3)
    tifffile.imwrite(tmp_path / "complex.tif", np.zeros((16, 16), np.complex64))
    with pytest.raises(InputError, match="unsupported pixel type complex64"):
        CheckedRegions(TiffRegionReader(tmp_path / "complex.tif"))


def test_check_zoom_names_the_file_and_the_options():
    check_zoom("a.tif", (40, 40), 0.02)  # 1 x 1 px is small, not empty
    with pytest.raises(InputError, match="shrinks the image .20 x 40 px. to 0 x 1 px") as info:
        check_zoom("a.tif", (20, 40), 0.02)
    assert str(info.value).startswith("a.tif: ") and "--diameter" in str(info.value)
    assert "--scale" in str(info.value)


def test_tiled_writer_streams_and_retypes(tmp_path):
    labels = np.random.default_rng(2).integers(0, 60000, (600, 700)).astype(np.uint32)
    tiles = (labels[y:y + 256, x:x + 256] for y in range(0, 600, 256) for x in range(0, 700, 256))
    resolution = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}
    write_tiled(tmp_path / "wide.tif", labels.shape, np.uint32, tiles, resolution=resolution)
    retype_tiled(tmp_path / "wide.tif", tmp_path / "narrow.tif", np.uint16, resolution)
    for name, dtype in (("wide.tif", np.uint32), ("narrow.tif", np.uint16)):
        with tifffile.TiffFile(tmp_path / name) as tif:
            page = tif.pages.first
            assert tif.is_bigtiff and page.is_tiled and page.dtype == dtype
            np.testing.assert_array_equal(page.asarray(), labels)


def test_wide_labels_stay_uint32(tmp_path, monkeypatch):
    """Above 65535 cells (here: above 1, patched) the labels are written as uint32."""
    monkeypatch.setattr(block_pipeline, "UINT16_MAX", 1)
    shape = (300, 300)
    rows = plan_blocks(shape, 256, 16)

    def decode_dots(outer, _):
        labels = np.zeros(tuple(s.stop - s.start for s in outer), np.int32)
        labels[::20, ::20] = np.arange(1, labels[::20, ::20].size + 1).reshape(
            labels[::20, ::20].shape)
        return labels

    out = tmp_path / "labels.tif"
    n = block_pipeline.write_block_labels(out, shape, rows,
                                          owned_blocks(rows, lambda outer: outer, decode_dots))
    assert tifffile.imread(out).dtype == np.uint32 and n > 1
    assert not list(tmp_path.glob(".*"))  # no temporary files left


@pytest.mark.slow
def test_block_mode_agrees_with_whole_image_mode_with_the_shipped_model(tmp_path):
    """With a real network the two modes tile differently and a ViT's maps depend a little
    on the tile, so cells may differ slightly; none may be lost or doubled wholesale."""
    from cellvit_cli.inference.pipeline import SegmentSettings, Segmenter, segment_array
    from cellvit_cli.modeling import ModelFolderError, load_model_folder

    try:
        loaded = load_model_folder(None)
    except ModelFolderError as err:
        pytest.skip(str(err))
    image, labels = load_nuclei_sample()
    mosaic = make_mosaic(image, labels, (1200, 1000), seed=3)[0]
    segmenter = Segmenter(loaded, SegmentSettings(scale=1.0, progress=False, device="cpu"))
    whole = segment_array(mosaic, segmenter)
    source = RegionSource(ArrayRegions(mosaic[np.newaxis]), loaded.config.in_channels)
    blocks = plan_blocks(mosaic.shape, 512, halo_for(loaded.config.median_diameter))

    def decode_block(maps, outer):
        return segmenter.decode(maps, tuple(s.stop - s.start for s in outer))

    out = tmp_path / "labels.tif"
    segment_blocks(mosaic.shape, blocks, lambda outer: segmenter.predictor.predict(
        source.read(outer)), decode_block, out)
    overlap = label_overlap(whole, tifffile.imread(out))
    n = max(overlap.true_labels.size, overlap.pred_labels.size)
    assert n > 300 and match(overlap, 0.5).iou.size >= 0.98 * n

