"""`segment --channel` segments the chosen channel of a multi-channel image (shipped model,
which sees nuclei only where there are some), and an image past the pixel budget switches
to block mode by itself (packed-cells model of conftest, a small budget)."""

import logging

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cellvit_cli.cli import main
from cellvit_cli.inference.pipeline import SegmentSettings, segment_paths
from cellvit_cli.io import read_label_metadata
from cellvit_cli.samples import load_nuclei_sample
from conftest import save_packed_cells_model


@pytest.fixture(scope="module")
def nuclei_crop():
    return load_nuclei_sample()[0][:256, :256]


def _segment(*args):
    """`cellvit segment ARGS` with the shipped model at zoom 1 on one 256 px tile."""
    args = [str(a) for a in args] + ["--scale", "1", "--tile-size", "256", "--device", "cpu"]
    return CliRunner().invoke(main, ["segment", *args], catch_exceptions=False)


def test_the_chosen_channel_is_the_one_segmented(tmp_path, nuclei_crop):
    """Noise in channel 0, nuclei in channel 1: --channel 1 gives the labels of the nuclei
    image alone, --channel 0 next to none."""
    noise = np.random.default_rng(0).integers(0, nuclei_crop.max(), nuclei_crop.shape)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "two.tif", np.stack([noise, nuclei_crop]).astype(np.uint16),
                     imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "nuclei.tif", nuclei_crop)
    runs = {}
    for name, args in {"one": ["--channel", "1"], "zero": ["--channel", "0"],
                       "nuclei": []}.items():
        source = tmp_path / ("nuclei.tif" if name == "nuclei" else "in/two.tif")
        result = _segment(source, "-o", tmp_path / name, *args)
        assert result.exit_code == 0, result.output
        assert "averaged" not in result.output
        runs[name] = tifffile.imread(next((tmp_path / name).glob("*_labels.tif")))
    assert runs["nuclei"].max() > 20  # 29 nuclei
    np.testing.assert_array_equal(runs["one"], runs["nuclei"])
    assert runs["zero"].max() < runs["one"].max() / 4  # 1 "cell" in the noise


def test_a_channel_out_of_range_fails_that_image_naming_it(tmp_path, nuclei_crop):
    tifffile.imwrite(tmp_path / "grey.tif", nuclei_crop)
    result = _segment(tmp_path / "grey.tif", "-o", tmp_path / "out", "--channel", "1")
    assert result.exit_code == 1
    assert "grey.tif" in result.output and "channel 1 out of range" in result.output
    assert not (tmp_path / "out" / "grey_labels.tif").exists()


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory):
    return save_packed_cells_model(tmp_path_factory.mktemp("model") / "packed")


def _tiled_bigtiff(path) -> bool:
    """Whether `path` was written by block mode (a tiled BigTIFF; whole images are not)."""
    with tifffile.TiffFile(path) as tif:
        return tif.is_bigtiff and tif.pages.first.is_tiled


@pytest.mark.parametrize("block_mode,big_in_blocks", [("auto", True), ("off", False)])
def test_an_image_past_the_pixel_budget_goes_to_block_mode(tmp_path, packed_model, caplog,
                                                           block_mode, big_in_blocks):
    """Budget 256 x 256 px at zoom 1: a 300 x 300 image is segmented block by block, a
    200 x 200 one whole, in the same run; --block-mode off keeps both whole."""
    image = load_nuclei_sample()[0]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", image[:300, :300])
    tifffile.imwrite(tmp_path / "in" / "small.tif", image[:200, :200])
    settings = SegmentSettings(pixel_budget=256 * 256, block_size=256, block_mode=block_mode,
                               diameter=12, tile_size=256, overlap=32, overlay=True,
                               progress=False, device="cpu")
    with caplog.at_level(logging.WARNING, logger="cellvit_cli"):
        report = segment_paths([tmp_path / "in"], tmp_path / "out", settings, packed_model)
    assert report.done == 2, report.failed
    out = tmp_path / "out"
    assert _tiled_bigtiff(out / "big_labels.tif") == big_in_blocks
    assert not _tiled_bigtiff(out / "small_labels.tif")
    assert (out / "big_overlay.png").exists() != big_in_blocks  # block mode: no overlay
    warned = [r.getMessage() for r in caplog.records if "block mode writes no overlay" in
              r.getMessage()]
    assert warned == ([f"{tmp_path / 'in' / 'big.tif'}: block mode writes no overlay or "
                       "maps; not written: overlay"] if big_in_blocks else [])
    big = tifffile.imread(out / "big_labels.tif")
    assert big.shape == (300, 300) and big.max() > 100
    meta = read_label_metadata(out / "big_labels.tif")
    assert meta["model"] == "packed" and meta["mode"] == "star" and meta["zoom"] == 1.0
