"""The automatic object size: the estimator's logic on an exact stand-in model, and the
shipped model on real nuclei zoomed 0.25x to 4x, in `segment_array` and `cellvit segment`."""

import csv
import logging

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scipy import ndimage as ndi

from cellvit_cli.cli import main
from cellvit_cli.inference import (Segmenter, SegmentSettings, segment_array,
                                   segment_array_with_size, segment_paths)
from cellvit_cli.inference.sizing import (MIN_SIDE, clamp_zoom, estimate_zoom,
                                          object_diameters)
from cellvit_cli.io import read_label_metadata
from cellvit_cli.modeling import DEFAULT_MODEL
from cellvit_cli.postprocess import decode
from cellvit_cli.preprocess import prepare, rescale, resize_labels
from cellvit_cli.samples import load_nuclei_sample

TARGET = 20.0


def _discs(diameter: float, shape=(600, 600), seed=0) -> np.ndarray:
    """(Y, X) float32 image of bright discs of `diameter` px on a regular jittered grid."""
    rng = np.random.default_rng(seed)
    step, r = max(int(diameter * 1.6), 4), diameter / 2
    image = np.zeros(shape, np.float32)
    half = int(np.ceil(r)) + 1
    for cy in range(step // 2, shape[0] - step // 2, step):
        for cx in range(step // 2, shape[1] - step // 2, step):
            y, x = np.array([cy, cx]) + rng.uniform(-0.1, 0.1, 2) * diameter
            ys = slice(max(0, int(y) - half), min(shape[0], int(y) + half + 1))
            xs = slice(max(0, int(x) - half), min(shape[1], int(x) + half + 1))
            yy, xx = np.ogrid[ys, xs]
            image[ys, xs][(yy - y) ** 2 + (xx - x) ** 2 <= r ** 2] = 1.0
    return image


def _threshold_model(x: np.ndarray) -> tuple[dict, np.ndarray]:
    """A stand-in for the network that sees exactly the objects of the image at any zoom."""
    return {}, ndi.label(x[0] > 0.5)[0]


def _estimate(image: np.ndarray, whole_pixels=np.inf, keep_band=1.0):
    """The estimate with the stand-in model (keep_band 1: always zoom to TARGET)."""
    x = image[np.newaxis]
    return estimate_zoom(image.shape, lambda r, z: rescale(x[(slice(None), *r)], z),
                         _threshold_model, TARGET, whole_pixels, keep_band)


@pytest.mark.parametrize("diameter", [5, 12, 20, 45, 100, 300])
def test_estimate_finds_objects_of_5_to_300_px(diameter):
    shape = (1600, 1600) if diameter >= 100 else (600, 600)
    estimate = _estimate(_discs(diameter, shape))
    assert estimate.diameter == pytest.approx(diameter, rel=0.15)
    assert estimate.zoom * diameter == pytest.approx(TARGET, rel=0.15)
    assert estimate.note is None
    assert estimate.result is not None  # the last whole-image probe is the result


@pytest.mark.parametrize("diameter, zoom", [(14, 1.0), (30, 1.0), (10, 2.0), (40, 0.5)])
def test_objects_near_the_model_size_keep_zoom_one(diameter, zoom):
    estimate = _estimate(_discs(diameter), keep_band=1.6)
    assert estimate.diameter == pytest.approx(diameter, rel=0.15)
    assert estimate.zoom == pytest.approx(zoom, rel=0.15)


def test_estimate_on_crops_when_the_image_is_too_big_to_probe_whole():
    estimate = _estimate(_discs(40, (1600, 1600)), whole_pixels=0)
    assert estimate.diameter == pytest.approx(40, rel=0.15)
    assert estimate.result is None  # crops only: the caller segments at estimate.zoom


def test_empty_image_falls_back_to_zoom_one():
    estimate = _estimate(np.zeros((300, 400), np.float32))
    assert estimate.zoom == 1.0 and estimate.diameter is None
    assert "no objects" in estimate.note
    assert estimate.result is not None and estimate.result[1].max() == 0  # zoom 1 reused


def test_a_model_whose_objects_do_not_follow_the_zoom_gets_zoom_one():
    def fixed_grid(x):  # "cells" of 6 px wherever it looks, at any zoom
        labels = np.zeros(x.shape[1:], np.int32)
        labels[::8, ::8] = 1
        labels = ndi.label(ndi.binary_dilation(labels > 0, iterations=3))[0]
        return {}, labels

    image = _discs(20)
    x = image[np.newaxis]
    estimate = estimate_zoom(image.shape, lambda r, z: rescale(x[(slice(None), *r)], z),
                             fixed_grid, TARGET)
    assert estimate.zoom == 1.0 and "do not scale" in estimate.note


def test_clamp_keeps_the_image_at_least_min_side():
    assert clamp_zoom(0.001, (100, 4000)) == pytest.approx(MIN_SIDE / 100)
    assert clamp_zoom(100.0, (100, 100)) == 8.0
    assert clamp_zoom(0.5, (512, 512)) == 0.5


def test_object_diameters_drop_cut_objects():
    labels = np.zeros((50, 50), np.int32)
    labels[10:20, 10:20] = 1
    labels[0:5, 30:40] = 2  # touches the edge
    assert object_diameters(labels).size == 2
    assert object_diameters(labels, drop_border=True) == pytest.approx([2 * np.sqrt(100 / np.pi)])


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (0, "auto"), (None, "auto"),
                                             ("0", "auto"), (24, 24.0), ("31.5", 31.5)])
def test_diameter_setting(value, expected):
    assert SegmentSettings(diameter=value).diameter == expected


@pytest.mark.parametrize("value", [-1, "big", float("nan")])
def test_bad_diameter_setting(value):
    with pytest.raises(ValueError, match="diameter"):
        SegmentSettings(diameter=value)


# --- the shipped model on real nuclei -------------------------------------------------

@pytest.fixture(scope="module")
def segmenter():
    from cellvit_cli.modeling import ModelFolderError

    try:
        return Segmenter.from_settings(SegmentSettings(progress=False, device="cpu"))
    except ModelFolderError as err:
        pytest.skip(str(err))


def _zoomed_sample(zoom: float) -> tuple[np.ndarray, np.ndarray]:
    image, labels = load_nuclei_sample()
    if zoom == 1:
        return image, labels
    zoomed = ndi.zoom(image.astype(np.float32), zoom, order=1, grid_mode=True,
                      mode="grid-constant")
    return zoomed, resize_labels(labels, zoomed.shape)


@pytest.mark.parametrize("zoom", [0.25, 0.5, 1.0, 2.0,
                                  pytest.param(4.0, marks=pytest.mark.slow)])
def test_shipped_model_estimates_real_nuclei_at_any_zoom(segmenter, zoom):
    image, labels = _zoomed_sample(zoom)
    true = np.median(object_diameters(labels))
    found, estimate = segment_array_with_size(image, segmenter)
    assert estimate.diameter == pytest.approx(true, rel=0.15), estimate.probes
    from cellvit_cli import metrics

    ap50 = metrics.scores(metrics.match_counts(metrics.label_overlap(labels, found), [0.5])[0])
    assert ap50["ap"] > 0.7  # the sample scores ~0.85 at its own size


def test_fixed_diameter_reproduces_the_fixed_zoom_pipeline(segmenter):
    """--diameter D: prepare at zoom median/D, predict, decode, resize back (as before the
    estimate existed), with no probe."""
    image, _ = load_nuclei_sample()
    loaded = segmenter.loaded
    fixed = Segmenter(loaded, SegmentSettings(diameter=30, progress=False, device="cpu"))
    zoom = loaded.config.median_diameter / 30
    x = prepare(image[np.newaxis], loaded.config.in_channels, None, zoom)
    maps = fixed.predictor.predict(x)
    expected = resize_labels(decode(maps, fixed.mode, loaded.thresholds), image.shape)
    labels, estimate = segment_array_with_size(image, fixed)
    assert estimate.zoom == zoom and estimate.probes == []
    np.testing.assert_array_equal(labels, expected)
    assert fixed.probe_predictor.seconds == 0


def _write(folder, name, image):
    folder.mkdir(exist_ok=True)
    tifffile.imwrite(folder / name, image)


def test_segment_default_is_auto_and_diameter_zero_is_the_same(tmp_path, caplog):
    image, _ = _zoomed_sample(2.0)
    _write(tmp_path / "in", "big_nuclei.tif", image.astype(np.uint16))
    runs = {}
    for name, args in {"default": [], "zero": ["--diameter", "0"]}.items():
        with caplog.at_level(logging.INFO, logger="cellvit_cli"):
            result = CliRunner().invoke(main, ["segment", str(tmp_path / "in"), "-o",
                                               str(tmp_path / name), *args])
        assert result.exit_code == 0, result.output
        runs[name] = tifffile.imread(tmp_path / name / "big_nuclei_labels.tif")
    np.testing.assert_array_equal(runs["default"], runs["zero"])
    line = next(r.getMessage() for r in caplog.records if "big_nuclei.tif" in r.getMessage())
    assert "diameter" in line and "zoom 0.4" in line  # nuclei ~47 px -> zoom ~0.4
    with open(tmp_path / "default" / "summary.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert row["status"] == "done" and 40 < float(row["diameter_px"]) < 56
    assert 0.35 < float(row["zoom"]) < 0.5 and int(row["cells"]) == runs["default"].max()
    meta = read_label_metadata(tmp_path / "default" / "big_nuclei_labels.tif")
    assert meta["zoom"] == pytest.approx(float(row["zoom"]), abs=1e-4)
    assert meta["size"] == "auto" and meta["model"] == DEFAULT_MODEL


def test_block_mode_uses_one_zoom_for_the_whole_image(tmp_path, segmenter):
    image, labels = _zoomed_sample(2.0)  # 1024 x 1024, nuclei ~47 px
    _write(tmp_path / "in", "slide.tif", image.astype(np.uint16))
    settings = SegmentSettings(block_mode="on", block_size=512, progress=False, device="cpu")
    report = segment_paths([tmp_path / "in"], tmp_path / "out", settings, segmenter.loaded)
    assert report.done == 1, report.failed
    record = report.images[0]
    whole = segment_array_with_size(image, segmenter)[1]
    assert float(record.zoom) == pytest.approx(whole.zoom, rel=0.15)  # crops vs whole image
    assert read_label_metadata(tmp_path / "out" / "slide_labels.tif")["zoom"] == pytest.approx(
        float(record.zoom), abs=1e-5)
    from cellvit_cli import metrics

    found = tifffile.imread(tmp_path / "out" / "slide_labels.tif")
    ap50 = metrics.scores(metrics.match_counts(metrics.label_overlap(labels, found), [0.5])[0])
    assert ap50["ap"] > 0.7


def test_an_image_zoomed_past_the_pixel_budget_goes_to_block_mode(tmp_path, segmenter):
    image, _ = _zoomed_sample(0.25)  # 128 x 128, nuclei ~6 px -> zoom ~3
    _write(tmp_path / "in", "small_nuclei.tif", image.astype(np.uint16))
    settings = SegmentSettings(pixel_budget=256 * 256, block_size=256, progress=False,
                               device="cpu")
    report = segment_paths([tmp_path / "in"], tmp_path / "out", settings, segmenter.loaded)
    assert report.done == 1, report.failed
    with tifffile.TiffFile(tmp_path / "out" / "small_nuclei_labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages.first.is_tiled  # written by block mode
    assert float(report.images[0].zoom) > 2


def test_segment_array_accepts_multichannel_images(segmenter):
    image, _ = _zoomed_sample(1.0)
    two = np.stack([image, image[::-1]])  # the mean of two channels: nuclei of both
    labels, estimate = segment_array_with_size(two, segmenter)
    grey = segment_array_with_size(image, segmenter)[1]
    assert estimate.diameter == pytest.approx(grey.diameter, rel=0.15)
    assert labels.shape == image.shape and labels.max() > 100


def test_segment_array_of_an_empty_image(segmenter):
    labels, estimate = segment_array_with_size(np.zeros((200, 300), np.uint8), segmenter)
    assert labels.shape == (200, 300) and labels.max() == 0
    assert estimate.zoom == 1.0 and "no objects" in estimate.note
    np.testing.assert_array_equal(segment_array(np.zeros((200, 300)), segmenter), labels)


def _probe_of(labels: np.ndarray, zoom: float, regions=None):
    """A probe of whole-image `labels` at `zoom`, or of its crops at `regions` (px of the
    unzoomed image)."""
    from cellvit_cli.inference.sizing import Probe

    if regions is None:
        full = tuple(slice(0, round(n / zoom)) for n in labels.shape)
        return Probe(zoom, object_diameters(labels), ({}, labels), [(full, labels)])
    pieces = [(r, labels[tuple(slice(round(s.start * zoom), round(s.stop * zoom)) for s in r)])
              for r in regions]
    return Probe(zoom, np.concatenate([object_diameters(p) for _, p in pieces]), pieces=pieces)


def test_texture_inside_large_objects_is_told_from_packed_small_objects():
    from cellvit_cli.inference.sizing import _texture_inside

    big = np.zeros((64, 64), np.int32)  # 1/8: two large objects
    big[8:40, 8:40], big[40:60, 30:60] = 1, 2
    specks = np.zeros((256, 256), np.int32)  # half size: a few specks inside them
    for k, (y, x) in enumerate([(50, 50), (90, 120), (180, 200), (60, 130)], start=1):
        specks[y:y + 5, x:x + 5] = k
    packed = ndi.label(_discs(8, (256, 256)) > 0)[0] * (resize_labels(big, (256, 256)) > 0)
    assert _texture_inside(_probe_of(specks, 0.5), _probe_of(big, 0.125))
    assert not _texture_inside(_probe_of(packed, 0.5), _probe_of(big, 0.125))
    crops = [(slice(64, 320), slice(64, 320)), (slice(256, 512), slice(192, 448))]
    assert _texture_inside(_probe_of(specks, 0.5, crops), _probe_of(big, 0.125))
    assert not _texture_inside(_probe_of(packed, 0.5, crops), _probe_of(big, 0.125))


def test_first_probe_of_a_big_image_looks_at_crops_only():
    from cellvit_cli.inference.sizing import FIRST_PROBE_SIDE, N_CROPS

    image = _discs(20, (2048, 2048))
    x = image[np.newaxis]
    seen = []

    def model(inp):
        seen.append(inp.shape[1] * inp.shape[2])
        return _threshold_model(inp)

    estimate = estimate_zoom(image.shape, lambda r, z: rescale(x[(slice(None), *r)], z), model,
                             TARGET, keep_band=1.6)
    assert estimate.zoom == 1.0 and estimate.diameter == pytest.approx(20, rel=0.15)
    first = seen[:N_CROPS]
    half_size_whole = (2048 // 2) ** 2
    assert sum(first) <= N_CROPS * FIRST_PROBE_SIDE ** 2 <= half_size_whole / 4
    assert sum(seen) < 0.1 * 2048 ** 2  # the 1/8 texture probe is the only other look


def test_crops_are_not_repeated_when_they_cover_the_image():
    from cellvit_cli.inference.sizing import _CropPicker

    image = _discs(20, (300, 400))[np.newaxis]
    picker = _CropPicker((300, 400), lambda r, z: rescale(image[(slice(None), *r)], z))
    assert len(picker.regions(0.5)) == 1  # 1024 px crops of a 300 x 400 image
    assert len(picker.regions(4.0)) == 4  # 128 px crops
