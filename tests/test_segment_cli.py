"""`cellvit segment` end to end with a tiny model built through the real builder."""

import hashlib
import os

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from cellvit_cli.cli import main
from cellvit_cli.inference.inputs import find_inputs, plan_jobs
from cellvit_cli.inference.pipeline import SegmentSettings, segment_array, segment_paths
from cellvit_cli.io import read_image
from cellvit_cli.samples import load_nuclei_sample
from conftest import save_packed_cells_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A ViT-tiny folder that sees packed round cells everywhere (see conftest)."""
    return save_packed_cells_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def inputs(tmp_path):
    image, _ = load_nuclei_sample()
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", image[:120, :160], imagej=True,
                     resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "um"})
    tifffile.imwrite(folder / "b.tiff", image[100:196, :112])
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 50)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _run(*args):
    """`cellvit segment ARGS`, at the fixture model's own size (--diameter 12, zoom 1) unless
    ARGS set the size: the size estimate is tested with the shipped model."""
    args = [str(a) for a in args]
    if not {"--diameter", "--scale"} & set(args):
        args += ["--diameter", "12"]
    return CliRunner().invoke(main, ["segment", *args], catch_exceptions=False)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_folder_with_a_broken_file_resume_and_overwrite(inputs, tmp_path, model_dir):
    out = tmp_path / "out"
    before = _digest(inputs)
    result = _run(inputs, "-o", out, "--model", model_dir, "--tile-size", "128", "--overlap", "32")
    assert result.exit_code == 1, result.output
    assert "2 image(s) done, 0 skipped, 1 failed" in result.output
    assert result.output.count("broken.tif") == 1  # one line naming it
    labels_a = tifffile.imread(out / "a_labels.tif")
    assert labels_a.shape == (120, 160) and labels_a.dtype == np.uint16 and labels_a.max() > 50
    assert read_image(out / "a_labels.tif").pixel_size == pytest.approx((0.5, 0.5))
    assert tifffile.imread(out / "b_labels.tif").shape == (96, 112)
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_labels.tif", "summary.csv"]
    assert _digest(inputs) == before  # inputs untouched

    mtime = (out / "a_labels.tif").stat().st_mtime_ns
    result = _run(inputs, "-o", out, "--model", model_dir, "--tile-size", "128", "--overlap", "32")
    assert "0 image(s) done, 2 skipped, 1 failed" in result.output and result.exit_code == 1
    assert (out / "a_labels.tif").stat().st_mtime_ns == mtime

    result = _run(inputs / "a.tif", "-o", out, "--model", model_dir, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "1 image(s) done, 0 skipped, 0 failed" in result.output
    assert (out / "a_labels.tif").stat().st_mtime_ns != mtime


def test_exports_and_exit_code_zero(inputs, tmp_path, model_dir):
    out = tmp_path / "out"
    result = _run(inputs / "a.tif", "-o", out, "--model", model_dir, "--roi", "--geojson",
                  "--overlay", "--measure", "--save-maps", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a.geojson", "a_cells.csv", "a_labels.tif", "a_maps_boundary.tif",
                     "a_maps_star.tif", "a_overlay.png", "a_rois.zip", "cells.csv", "summary.csv"]
    # asking for an export that is missing redoes the image
    (out / "a_rois.zip").unlink()
    result = _run(inputs / "a.tif", "-o", out, "--model", model_dir, "--roi")
    assert "1 image(s) done, 0 skipped" in result.output


def test_block_mode_writes_a_tiled_bigtiff(inputs, tmp_path, model_dir):
    out = tmp_path / "out"
    result = _run(inputs / "a.tif", "-o", out, "--model", model_dir, "--block-mode", "on",
                  "--tile-size", "128", "--overlap", "32")
    assert result.exit_code == 0, result.output
    with tifffile.TiffFile(out / "a_labels.tif") as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled and page.dtype == np.uint16
        assert page.shape == (120, 160) and page.asarray().max() > 50
    assert read_image(out / "a_labels.tif").pixel_size == pytest.approx((0.5, 0.5))
    # block mode writes ROIs (asking for them redoes the image), no overlay (asking for
    # one does not make the image undone)
    result = _run(inputs / "a.tif", "-o", out, "--model", model_dir, "--block-mode", "on",
                  "--tile-size", "128", "--overlap", "32", "--roi")
    assert "1 image(s) done, 0 skipped" in result.output and (out / "a_rois.zip").is_file()
    result = _run(inputs / "a.tif", "-o", out, "--model", model_dir, "--block-mode", "on",
                  "--tile-size", "128", "--overlap", "32", "--roi", "--overlay")
    assert "0 image(s) done, 1 skipped" in result.output


@pytest.mark.parametrize("args,message", [
    (["--diameter", "10", "--scale", "2"], "not both"),
    (["--mode", "flow"], "flow"),
    (["--pattern", "*.png"], "no TIFF files"),
])
def test_usage_errors(inputs, tmp_path, model_dir, args, message):
    result = _run(inputs, "-o", tmp_path / "out", "--model", model_dir, *args)
    assert result.exit_code == 2 and message in result.output


def test_unknown_model_and_device(inputs, tmp_path):
    result = _run(inputs, "-o", tmp_path / "out", "--model", tmp_path / "nothing")
    assert result.exit_code == 2 and "nothing" in result.output  # a usage error
    if not torch.cuda.is_available():
        result = _run(inputs, "-o", tmp_path / "out", "--device", "cuda")
        assert result.exit_code == 2 and "CUDA" in result.output


def test_find_inputs_folders_globs_patterns(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("x.tif", "y.TIFF", "z.ome.tif", "sub/w.tif", "n.png"):
        (tmp_path / name).write_bytes(b"")
    names = lambda found: sorted(str(name) for _, name in found)  # noqa: E731
    assert names(find_inputs([tmp_path])) == ["x", "y", "z"]
    assert names(find_inputs([tmp_path], recursive=True)) == ["sub/w", "x", "y", "z"]
    assert names(find_inputs([tmp_path], pattern="x*")) == ["x"]
    assert names(find_inputs([str(tmp_path / "*.tif")])) == ["x", "z"]
    (tmp_path / "sub" / "w_labels.tif").write_bytes(b"")  # outputs are never inputs
    assert names(find_inputs([tmp_path], recursive=True, exclude=tmp_path / "sub")) == [
        "sub/w", "x", "y", "z"]
    (tmp_path / "x.tiff").write_bytes(b"")
    with pytest.raises(ValueError, match="same outputs"):
        find_inputs([tmp_path])
    jobs = plan_jobs(find_inputs([tmp_path / "sub"]), tmp_path / "out")
    assert jobs[0].outputs["labels"] == tmp_path / "out" / "w_labels.tif"


def test_segment_array_and_diameter_rescale(model_dir):
    image, _ = load_nuclei_sample()
    settings = SegmentSettings(tile_size=128, overlap=32, diameter=24.0, progress=False)
    labels = segment_array(image[:100, :130], model_dir, settings)
    assert labels.shape == (100, 130) and labels.dtype == np.int32 and labels.max() > 8
    # zoomed by 12/24: cells come out about twice as large as at the model's own size
    plain = segment_array(image[:100, :130], model_dir, SegmentSettings(
        tile_size=128, overlap=32, diameter=12.0, progress=False))
    assert np.bincount(labels.ravel())[1:].mean() > 2.5 * np.bincount(plain.ravel())[1:].mean()


def test_segment_paths_report_counts_and_timings(inputs, tmp_path, model_dir):
    os.remove(inputs / "broken.tif")
    report = segment_paths([inputs], tmp_path / "out",
                           SegmentSettings(model=model_dir, tile_size=128, overlap=32,
                                           progress=False))
    assert (report.done, report.skipped, report.failed) == (2, 0, [])
    assert report.cells > 100 and report.pixels == 120 * 160 + 96 * 112
    assert {"read", "network", "decode", "write"} <= set(report.stage_seconds)
