"""`segment`'s knobs (thresholds, --min-size, --exclude-edges, normalisation, --invert),
multi-channel images (warning, --measure-channels) and channel-last arrays, with the tiny
star model of test_segment_cli.py on the stardist sample."""

import csv
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from skimage import measure as skmeasure

from cellvit_cli.cli import main
from cellvit_cli.inference.blocks import halo_for, plan_blocks
from cellvit_cli.inference.pipeline import (SegmentSettings, Segmenter, segment_array,
                                            segment_paths)
from cellvit_cli.modeling.folder import ModelFolderError, read_config, resolve_model
from cellvit_cli.postprocess.cleanup import border_labels, clean_labels
from cellvit_cli.preprocess import PERCENTILES, prepare
from cellvit_cli.samples import load_nuclei_sample
from conftest import save_packed_cells_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A ViT-tiny folder that sees packed round cells everywhere (see conftest)."""
    return save_packed_cells_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def nuclei():
    return load_nuclei_sample()[0][:120, :160]


@pytest.fixture(scope="module")
def segmenter(model_dir):
    return Segmenter.from_settings(SegmentSettings(diameter=12, progress=False), model_dir)


def _settings(**knobs):
    return SegmentSettings(diameter=12, progress=False, tile_size=128, overlap=32, **knobs)


def _run(*args):
    args = [str(a) for a in args] + ["--diameter", "12", "--tile-size", "128", "--overlap", "32"]
    return CliRunner().invoke(main, ["segment", *args], catch_exceptions=False)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _two_channels(folder, nuclei):
    """A (2, Y, X) TIFF: nuclei in channel 0, a marker (2 x nuclei + 5) in channel 1."""
    folder.mkdir()
    stack = np.stack([nuclei, nuclei * 2 + 5]).astype(np.uint16)
    tifffile.imwrite(folder / "two.tif", stack, imagej=True, metadata={"axes": "CYX"})
    return folder / "two.tif", stack


def test_thresholds_override_the_model_and_unused_ones_are_refused(tmp_path, nuclei, model_dir):
    tifffile.imwrite(tmp_path / "a.tif", nuclei)
    result = _run(tmp_path / "a.tif", "-o", tmp_path / "out", "--model", model_dir,
                  "--prob-thresh", "0.99")  # the model's prob is 0.98 everywhere
    assert result.exit_code == 0, result.output
    assert tifffile.imread(tmp_path / "out" / "a_labels.tif").max() == 0
    for args, mode in [(["--fg-thresh", "0.4"], "'star'"),  # auto mode: the model's star
                       (["--mode", "boundary", "--nms-thresh", "0.3"], "'boundary'")]:
        result = _run(tmp_path / "a.tif", "-o", tmp_path / "o2", "--model", model_dir, *args)
        assert result.exit_code == 2 and mode in result.output, result.output
    with pytest.raises(ValueError, match="--flow-thresh: not used by mode 'star'"):
        SegmentSettings(mode="star", flow_thresh=0.4)


def test_min_size_and_exclude_edges(nuclei, segmenter, model_dir):
    plain = segment_array(nuclei, segmenter)
    areas = np.bincount(plain.ravel())[1:]
    min_size = int(np.median(areas[areas > 0])) + 1
    cleaned = segment_array(nuclei, model_dir, _settings(min_size=min_size, exclude_edges=True))
    kept = np.bincount(cleaned.ravel())[1:]
    assert 0 < len(kept) < len(areas) and kept.min() >= min_size
    assert len(border_labels(cleaned)) == 0 and len(border_labels(plain)) > 0
    assert set(np.unique(cleaned)) == set(range(len(kept) + 1))  # relabelled 1..N


def test_clean_labels_on_chosen_borders():
    labels = np.zeros((10, 10), np.int32)
    labels[0, 2:4], labels[4:6, 4:6], labels[8:, 9] = 1, 2, 3  # top, inside (4 px), right
    assert np.array_equal(np.unique(clean_labels(labels, exclude_edges=True)), [0, 1])
    only_top = clean_labels(labels, exclude_edges=True, borders=(True, False, False, False))
    assert only_top.max() == 2 and only_top[9, 9] == 2
    assert clean_labels(labels, min_size=3).max() == 1 and clean_labels(labels) is labels


def test_block_mode_cleans_with_the_whole_image_border(tmp_path, model_dir):
    image = load_nuclei_sample()[0][:300, :300]
    tifffile.imwrite(tmp_path / "big.tif", image)
    settings = _settings(block_mode="on", block_size=256, exclude_edges=True, min_size=60)
    report = segment_paths([tmp_path / "big.tif"], tmp_path / "out", settings, model_dir)
    assert report.done == 1, report.failed
    labels = tifffile.imread(tmp_path / "out" / "big_labels.tif")
    areas = np.bincount(labels.ravel())[1:]
    # --min-size applies to each cell as its block decoded it; where a cell of a block
    # written earlier already holds some of its pixels, it can end smaller (a known limit)
    small = np.count_nonzero((areas > 0) & (areas < 60))
    assert report.cells > 100 and small <= 0.02 * report.cells
    assert len(border_labels(labels)) == 0
    seam = plan_blocks(labels.shape, 256, halo_for(12.0))[0][1].core[1].start
    across = set(np.unique(labels[:, seam - 1])) & set(np.unique(labels[:, seam])) - {0}
    assert seam > 0 and across  # a block's edge is no image border: cells span it


def test_norm_percentiles_and_invert(tmp_path, nuclei, model_dir):
    data = nuclei[np.newaxis]
    segmenter = Segmenter.from_settings(_settings(norm_percentiles=(5, 95), invert=True),
                                        model_dir)
    expected = 1 - prepare(data, 1, percentiles=(5, 95))
    np.testing.assert_allclose(segmenter.prepare(data), expected, atol=1e-6)
    assert not np.allclose(expected, 1 - prepare(data, 1))
    with pytest.raises(ValueError, match="LOW < HIGH"):
        SegmentSettings(norm_percentiles=(99, 1))
    tifffile.imwrite(tmp_path / "a.tif", nuclei)
    result = _run(tmp_path / "a.tif", "-o", tmp_path / "out", "--norm-percentiles", "99", "1")
    assert result.exit_code == 2 and "LOW < HIGH" in result.output


def test_averaged_channels_warn_once_naming_the_file(tmp_path, nuclei, model_dir):
    path, _ = _two_channels(tmp_path / "in", nuclei)
    result = _run(path, "-o", tmp_path / "out", "--model", model_dir)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "averaged" in line]
    assert len(warnings) == 1 and "two.tif" in warnings[0] and "--channel" in warnings[0]
    result = _run(path, "-o", tmp_path / "out1", "--model", model_dir, "--channel", "1")
    assert "averaged" not in result.output


def test_measure_channels_and_columns(tmp_path, nuclei, model_dir):
    path, stack = _two_channels(tmp_path / "in", nuclei)
    out = tmp_path / "out"
    result = _run(path, "-o", out, "--model", model_dir, "--channel", "0", "--measure",
                  "--measure-channels", "all")
    assert result.exit_code == 0, result.output
    rows, labels = _rows(out / "two_cells.csv"), tifffile.imread(out / "two_labels.tif")
    assert rows and all(r["image"] == "two.tif" for r in rows)
    assert list(rows[0])[:3] == ["image", "label", "centroid_y"]
    props = skmeasure.regionprops_table(labels, intensity_image=stack[1], properties=[
        "intensity_mean", "intensity_max", "axis_major_length", "orientation",
        "equivalent_diameter_area", "area"])
    column = {name: np.array([float(r[name]) for r in rows]) for name in rows[0] if name != "image"}
    np.testing.assert_allclose(column["mean_intensity_c1"], 2 * column["mean_intensity_c0"] + 5)
    np.testing.assert_allclose(column["mean_intensity_c1"], props["intensity_mean"], rtol=1e-5)
    np.testing.assert_allclose(column["max_intensity_c1"], props["intensity_max"])
    np.testing.assert_allclose(column["integrated_intensity_c1"],
                               props["intensity_mean"] * props["area"], rtol=1e-5)
    for ours, theirs in [("axis_major_length", "axis_major_length"),
                         ("orientation", "orientation"),
                         ("equivalent_diameter", "equivalent_diameter_area")]:
        np.testing.assert_allclose(column[ours], props[theirs], rtol=1e-5, atol=1e-6)
    assert {"min_intensity_c0", "axis_minor_length", "eccentricity", "perimeter"} <= set(column)

    result = _run(path, "-o", tmp_path / "out1", "--model", model_dir, "--channel", "1",
                  "--measure")
    header = list(_rows(tmp_path / "out1" / "two_cells.csv")[0])
    assert "mean_intensity_c1" in header and "mean_intensity_c0" not in header
    result = _run(path, "-o", tmp_path / "out2", "--model", model_dir, "--measure",
                  "--measure-channels", "2")
    assert result.exit_code == 1 and "measure channel 2 out of range" in result.output
    result = _run(path, "-o", tmp_path / "out3", "--measure-channels", "all")
    assert result.exit_code == 2 and "need measure (--measure)" in result.output


def test_segment_array_takes_channel_last_rgb(nuclei, segmenter):
    rgb = np.stack([nuclei, nuclei // 2, nuclei], axis=-1)
    rgba = np.concatenate([rgb, np.full(nuclei.shape + (1,), 255, nuclei.dtype)], axis=-1)
    expected = segment_array(np.moveaxis(rgb, -1, 0), segmenter)
    for image in (rgb, rgba):
        labels = segment_array(image, segmenter)
        assert labels.shape == nuclei.shape and labels.max() > 50
        np.testing.assert_array_equal(labels, expected)
    with pytest.raises(ValueError, match=r"RGB \(Y, X, 3\)"):
        segment_array(np.zeros((2, 3, 4, 5)), segmenter)


def test_save_maps_writes_every_head_and_resume_expects_them(tmp_path, nuclei):
    model = save_packed_cells_model(tmp_path / "tri", heads=("star", "boundary", "flow"))
    tifffile.imwrite(tmp_path / "a.tif", nuclei)
    out = tmp_path / "out"
    result = _run(tmp_path / "a.tif", "-o", out, "--model", model, "--save-maps")
    assert result.exit_code == 0, result.output
    heads = {"star", "boundary", "flow"}
    assert {p.name for p in out.glob("a_maps_*.tif")} == {f"a_maps_{h}.tif" for h in heads}
    assert tifffile.imread(out / "a_maps_flow.tif").shape[0] == 3  # prob, dy, dx
    (out / "a_maps_flow.tif").unlink()  # a head's map missing: the image is redone
    report = segment_paths([tmp_path / "a.tif"], out, _settings(save_maps=True), model)
    assert (report.done, report.skipped) == (1, 0) and (out / "a_maps_flow.tif").is_file()
    report = segment_paths([tmp_path / "a.tif"], out, _settings(save_maps=True), model)
    assert (report.done, report.skipped) == (0, 1)


def test_measure_writes_one_cells_csv_for_the_run(tmp_path, nuclei, model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, crop in [("b", nuclei[:, :80]), ("a", nuclei[:60])]:
        tifffile.imwrite(folder / f"{name}.tif", crop)
    out = tmp_path / "out"
    assert _run(folder / "a.tif", "-o", out, "--model", model_dir, "--measure").exit_code == 0
    result = _run(folder, "-o", out, "--model", model_dir, "--measure")  # a skipped, b done
    assert result.exit_code == 0 and "1 skipped" in result.output, result.output
    combined = _rows(out / "cells.csv")
    assert combined == _rows(out / "a_cells.csv") + _rows(out / "b_cells.csv")
    assert {r["image"] for r in combined} == {"a.tif", "b.tif"}
    assert not list(out.glob(".*.tmp-*"))


def _with_normalization(folder, percentiles):
    """`folder`'s config.json with these normalization percentiles."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "normalization": {"percentiles": percentiles}}))
    return folder


def test_the_model_folder_normalization_applies_unless_given(tmp_path, nuclei):
    model = _with_normalization(save_packed_cells_model(tmp_path / "m"), [5, 95])
    data = nuclei[np.newaxis]
    own = Segmenter.from_settings(_settings(), model)
    assert own.percentiles == (5.0, 95.0)
    np.testing.assert_array_equal(own.prepare(data), prepare(data, 1, percentiles=(5, 95)))
    given = Segmenter.from_settings(_settings(norm_percentiles=(1, 99.8)), model)
    np.testing.assert_array_equal(given.prepare(data), prepare(data, 1))
    assert read_config(resolve_model()).percentiles == PERCENTILES == (1.0, 99.8)  # shipped


@pytest.mark.parametrize("block_mode", ["on", "off"])
def test_segment_normalises_as_the_model_folder_says(tmp_path, nuclei, monkeypatch, block_mode):
    """Whole images and block mode take their percentiles from the model's config.json."""
    model = _with_normalization(save_packed_cells_model(tmp_path / "m"), [20, 80])
    tifffile.imwrite(tmp_path / "a.tif", nuclei)
    percentile, used = np.percentile, []

    def spy(a, q, *args, **kwargs):
        used.append(tuple(np.atleast_1d(q).tolist()))
        return percentile(a, q, *args, **kwargs)

    monkeypatch.setattr(np, "percentile", spy)
    result = _run(tmp_path / "a.tif", "-o", tmp_path / "out", "--model", model,
                  "--block-mode", block_mode)
    assert result.exit_code == 0, result.output
    assert (20.0, 80.0) in used and PERCENTILES not in used


def test_old_and_damaged_normalization_in_config_json(tmp_path):
    model = save_packed_cells_model(tmp_path / "m")
    path = model / "config.json"
    old = json.loads(path.read_text()) | {"pixel_size": None}  # written before 0.2, unused
    path.write_text(json.dumps(old))
    assert read_config(model).percentiles == PERCENTILES
    assert "pixel_size" not in json.loads((save_packed_cells_model(tmp_path / "n") /
                                           "config.json").read_text())
    for bad in ({"percentiles": [99, 1]}, {"low": 1}, [1, 99]):
        path.write_text(json.dumps(old | {"normalization": bad}))
        with pytest.raises(ModelFolderError, match="config.json: normalization must be"):
            read_config(model)
