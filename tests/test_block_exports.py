"""Block mode writes the ROI zip, GeoJSON and measurements CSV block by block, and they
describe exactly the labels it writes: the same files, up to float rounding, as the
whole-image exports of those labels (`export.write_*`), with the ids and areas of their
regionprops, measured on the raw intensities of the channels asked."""

import csv
import json

import numpy as np
import pytest
import roifile
import tifffile
from skimage.measure import regionprops_table

from cellvit_cli import export
from cellvit_cli.bigtiff import ArrayRegions
from cellvit_cli.inference import block_pipeline
from cellvit_cli.inference.block_pipeline import BlockExports, write_block_labels
from cellvit_cli.inference.blocks import owned_blocks, plan_blocks
from cellvit_cli.inference.pipeline import SegmentSettings, segment_paths
from cellvit_cli.resolution import resolution_options
from cellvit_cli.samples import load_nuclei_sample, make_mosaic
from conftest import save_packed_cells_model
from test_export import iou_with_polygon

PIXEL_SIZE = (0.5, 0.5)


def _read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_rows(rows: list[dict], expected: list[dict]) -> None:
    """CSV rows equal: text columns exactly, numbers up to the last printed digit."""
    assert len(rows) == len(expected) and list(rows[0]) == list(expected[0])
    for row, want in zip(rows, expected):
        for name, value in want.items():
            if name == "image":
                assert row[name] == value
            else:
                assert float(row[name]) == pytest.approx(float(value), abs=2e-6), name


def assert_exports_describe(labels: np.ndarray, image: np.ndarray, out, stem: str,
                            channels: list[int], tmp_path) -> None:
    """The block-mode exports OUT/<stem>* hold the cells of `labels` (the written labels),
    as the whole-image exports of `labels` would, measured in `image` (C, Y, X) raw."""
    ids = np.unique(labels)[1:]
    props = regionprops_table(labels, properties=["label", "area"])
    assert list(props["label"]) == list(ids)
    features = json.loads((out / f"{stem}.geojson").read_text())["features"]
    assert [f["properties"]["label"] for f in features] == list(ids)
    assert [f["properties"]["area"] for f in features] == list(props["area"])
    rois = roifile.roiread(out / f"{stem}_rois.zip")
    assert [roi.name for roi in rois] == [f"cell_{i:04d}" for i in ids]
    for roi in rois[::25]:
        label = int(roi.name.removeprefix("cell_"))
        assert iou_with_polygon(labels, label, roi.coordinates()) >= 0.8, roi.name
    rows = _read_csv(out / f"{stem}_cells.csv")
    assert [int(r["label"]) for r in rows] == list(ids)
    assert [int(r["area"]) for r in rows] == list(props["area"])

    export.write_geojson(labels, tmp_path / "whole.geojson", PIXEL_SIZE)
    assert features == json.loads((tmp_path / "whole.geojson").read_text())["features"]
    export.write_roi_zip(labels, tmp_path / "whole_rois.zip")
    whole_rois = roifile.roiread(tmp_path / "whole_rois.zip")
    assert [r.tobytes() for r in rois] == [r.tobytes() for r in whole_rois]
    export.write_measurements(labels, image, tmp_path / "whole.csv", PIXEL_SIZE,
                              channels=channels, image_name=f"{stem}.tif")
    _assert_same_rows(rows, _read_csv(tmp_path / "whole.csv"))


@pytest.fixture(scope="module")
def mosaic():
    """A (600, 600) mosaic of the nuclei sample: image uint16 and labels int32."""
    image, labels = load_nuclei_sample()
    image, labels = make_mosaic(image, labels, (600, 600), seed=1)
    return image, labels.astype(np.int32)


def _decode_mosaic(labels):
    """decode(maps, outer) of a network that finds exactly the cells of `labels`."""
    def decode(_, outer):
        return labels[outer]
    return decode


def test_exports_built_block_by_block_describe_the_written_labels(tmp_path, mosaic):
    """No network: each block 'finds' the true cells of its outer region; cells on the
    seams between the 3 x 3 blocks are owned once, with all their pixels."""
    image, truth = mosaic
    raw = np.stack([image, (image[::-1] // 3).astype(np.uint16)])  # (2, Y, X)
    out = tmp_path / "out"
    out.mkdir()
    paths = {"rois": out / "m_rois.zip", "geojson": out / "m.geojson",
             "measurements": out / "m_cells.csv"}
    exports = BlockExports(paths, ArrayRegions(raw), PIXEL_SIZE, [0, 1], "m.tif")
    rows = plan_blocks(truth.shape, 256, 48)
    steps = []
    owned = owned_blocks(rows, lambda outer: outer, _decode_mosaic(truth))
    n = write_block_labels(out / "m_labels.tif", truth.shape, rows, owned,
                           on_block=lambda *cells: (steps.append(cells[2]), exports.add(*cells)),
                           exports=exports)
    labels = tifffile.imread(out / "m_labels.tif").astype(np.int32)
    assert len(steps) == 9 and n == len(np.unique(labels)) - 1 > 150
    assert_exports_describe(labels, raw, out, "m", [0, 1], tmp_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in paths.values()] + ["m_labels.tif"])  # no temporary files


@pytest.mark.parametrize("failing", ["decode", "narrow", "rename"])
def test_a_failed_block_run_leaves_no_exports(tmp_path, mosaic, monkeypatch, failing):
    """A block that cannot be decoded, labels that cannot be narrowed or renamed into place
    (a folder in the way): none of the exports of this run stay behind, nor any temporary
    file."""
    truth = mosaic[1]
    decode = _decode_mosaic(truth)
    if failing == "narrow":
        monkeypatch.setattr(block_pipeline, "_narrow", _raise_os_error)
    elif failing == "rename":
        (tmp_path / "m_labels.tif").mkdir()
    else:
        decode = _failing_after_first_row(decode)
    paths = {"rois": tmp_path / "m_rois.zip", "geojson": tmp_path / "m.geojson",
             "measurements": tmp_path / "m_cells.csv"}
    exports = BlockExports(paths, ArrayRegions(mosaic[0][None]), None, [0], "m.tif")
    rows = plan_blocks(truth.shape, 256, 48)
    with pytest.raises((OSError, ValueError)):
        write_block_labels(tmp_path / "m_labels.tif", truth.shape, rows,
                           owned_blocks(rows, lambda outer: outer, decode),
                           on_block=exports.add, exports=exports)
    assert [p.name for p in tmp_path.iterdir()] == (["m_labels.tif"] if failing == "rename"
                                                     else [])


def _raise_os_error(*_):
    raise OSError(28, "No space left on device")


def _failing_after_first_row(decode):
    """`decode` for the first row of blocks, a ValueError for the others."""
    def failing(maps, outer):
        if outer[0].start > 0:
            raise ValueError("no maps")
        return decode(maps, outer)
    return failing


def test_block_exports_refuse_what_block_mode_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="overlay"):
        BlockExports({"overlay": tmp_path / "o.png"})


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory):
    return save_packed_cells_model(tmp_path_factory.mktemp("model") / "packed")


def test_segment_writes_the_exports_of_block_mode_images(tmp_path, packed_model, mosaic, caplog):
    """Budget 256 x 256 px: big.tif (2 channels, 600 x 600, channel 0 segmented, both
    measured) goes through 3 x 3 blocks of 256 px, small.tif (200 x 200) whole; both
    get their exports, and OUT/cells.csv holds the cells of both."""
    image = mosaic[0]
    marker = np.random.default_rng(0).integers(0, 1000, image.shape).astype(np.uint16)
    big = np.stack([image, marker])
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", big, photometric="minisblack",
                     planarconfig="separate", **resolution_options(PIXEL_SIZE))
    tifffile.imwrite(tmp_path / "in" / "small.tif", big[:, :200, :200],
                     photometric="minisblack", planarconfig="separate",
                     **resolution_options(PIXEL_SIZE))
    settings = SegmentSettings(pixel_budget=256 * 256, block_size=256, diameter=12,
                               tile_size=256, overlap=32, channel=0, measure_channels=(0, 1),
                               roi=True, geojson=True, measure=True, progress=False,
                               device="cpu")
    report = segment_paths([tmp_path / "in"], tmp_path / "out", settings, packed_model)
    assert report.done == 2, report.failed
    assert "block mode writes no" not in caplog.text
    out = tmp_path / "out"
    labels = tifffile.imread(out / "big_labels.tif").astype(np.int32)
    with tifffile.TiffFile(out / "big_labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages.first.is_tiled  # block mode wrote it
    n_cells = len(np.unique(labels)) - 1
    assert n_cells > 1000 and report.images[0].cells == n_cells
    assert_exports_describe(labels, big, out, "big", [0, 1], tmp_path)
    run_cells = _read_csv(out / "cells.csv")
    names = [r["image"] for r in run_cells]
    assert names.count("big.tif") == n_cells and names.count("small.tif") > 100
    assert not list(out.glob(".*"))  # no temporary files


def test_a_rerun_redoes_block_mode_images_for_their_missing_exports(tmp_path, packed_model):
    """Block-mode labels without a GeoJSON: asking for it redoes the image; then it is done
    (an overlay, which block mode does not write, is not waited for)."""
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "big.tif", load_nuclei_sample()[0][:300, :300])
    base = {"block_mode": "on", "block_size": 256, "diameter": 12, "tile_size": 256,
            "overlap": 32, "progress": False, "device": "cpu"}

    def run(**asked):
        return segment_paths([tmp_path / "in"], tmp_path / "out",
                             SegmentSettings(**base, **asked), packed_model)

    assert run().done == 1
    assert run(geojson=True).done == 1 and (tmp_path / "out" / "big.geojson").is_file()
    again = run(geojson=True, overlay=True)
    assert (again.done, again.skipped) == (0, 1)
