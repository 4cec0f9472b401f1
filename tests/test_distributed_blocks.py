"""One huge image with its blocks spread over a LocalCluster of 2 worker processes
(`distributed_blocks`): the same labels and exports as single-process block mode, a worker
killed mid-run, a failing block named by its position, and the client's packed results."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

distributed = pytest.importorskip("distributed")

from cellvit_cli.cli import main  # noqa: E402
from cellvit_cli.inference.blocks import PackedCells  # noqa: E402
from cellvit_cli.inference.distributed import segment_paths_distributed  # noqa: E402
from cellvit_cli.inference.pipeline import SegmentSettings, segment_paths  # noqa: E402
from cellvit_cli.samples import load_nuclei_sample, make_mosaic  # noqa: E402
from dask_helpers import KillOnce, by_value  # noqa: E402
from test_zarr_io import zarr_labels  # noqa: E402

# The shipped model at zoom 1 on a 1024 x 1536 mosaic of the real nuclei sample: 6 blocks.
OPTIONS = dict(diameter=17.0, block_size=512, pixel_budget=1024 * 1024, progress=False)
EXPORTS = ("m_labels.tif", "m.geojson", "m_cells.csv")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with the mosaic m.tif (block mode by its size), one small image and a
    corrupt TIFF."""
    image, labels = load_nuclei_sample()
    folder = tmp_path_factory.mktemp("in")
    tifffile.imwrite(folder / "m.tif", make_mosaic(image, labels, (1024, 1536), seed=3)[0])
    tifffile.imwrite(folder / "small.tif", image[:256, :256])
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 50)
    return folder


@pytest.fixture(scope="module")
def settings():
    return SegmentSettings(roi=True, geojson=True, measure=True, zarr=True, **OPTIONS)


@pytest.fixture(scope="module")
def reference(images, settings, tmp_path_factory):
    """The single-process run's output folder."""
    out = tmp_path_factory.mktemp("single")
    report = segment_paths([images], out, settings)
    assert report.done == 2 and len(report.failed) == 1
    return out


def _rois(folder: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(folder / "m_rois.zip") as z:  # entries' times differ, not their bytes
        return {name: z.read(name) for name in z.namelist()}


def _same_outputs(folder: Path, reference: Path) -> None:
    for name in EXPORTS + ("small_labels.tif",):
        assert (folder / name).read_bytes() == (reference / name).read_bytes(), name
    assert _rois(folder) == _rois(reference)
    assert np.array_equal(zarr_labels(folder / "m_labels.ome.zarr"),
                          zarr_labels(reference / "m_labels.ome.zarr"))


def test_blocks_on_workers_give_the_labels_and_exports_of_one_process(
        client, images, settings, reference, tmp_path, caplog):
    caplog.set_level("INFO", logger="cellvit_cli")
    report = segment_paths_distributed([images], tmp_path, settings, client)
    assert (report.done, len(report.failed)) == (2, 1) and "broken.tif" in report.failed[0]
    _same_outputs(tmp_path, reference)
    labels = tifffile.imread(tmp_path / "m_labels.tif")
    assert len(np.unique(labels)) - 1 == labels.max() > 300  # numbered 1..n across blocks
    assert any("m.tif: diameter" in line and "cells" in line for line in caplog.messages)
    assert not list(tmp_path.glob(".*"))  # no temporary files left

    mtime = (tmp_path / "m_labels.tif").stat().st_mtime_ns
    again = segment_paths_distributed([images], tmp_path, settings, client)
    assert (again.done, again.skipped) == (0, 2)
    assert (tmp_path / "m_labels.tif").stat().st_mtime_ns == mtime


def test_auto_size_is_estimated_once_for_all_blocks(client, images, tmp_path):
    """With the size estimated, the plan task measures it once and every block uses it:
    the labels are those of single-process block mode at that zoom."""
    auto = SegmentSettings(**{**OPTIONS, "diameter": "auto"}, pattern="m.tif")
    single = segment_paths([images], tmp_path / "single", auto)
    report = segment_paths_distributed([images], tmp_path / "dask", auto, client)
    assert report.images[0].zoom == single.images[0].zoom
    assert ((tmp_path / "dask/m_labels.tif").read_bytes()
            == (tmp_path / "single/m_labels.tif").read_bytes())


def test_an_ome_zarr_image_on_workers_gives_the_labels_of_its_tiff(client, images, reference,
                                                                   tmp_path):
    """The mosaic as an OME-Zarr image: block tasks read its chunks, same labels."""
    zarr = pytest.importorskip("zarr")
    data = tifffile.imread(images / "m.tif")
    group = zarr.open_group(store=str(tmp_path / "m.ome.zarr"), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}]}]
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(256, 256))[:] = data
    report = segment_paths_distributed([tmp_path / "m.ome.zarr"], tmp_path / "out",
                                       SegmentSettings(**OPTIONS), client)
    assert report.done == 1 and not report.failed
    assert np.array_equal(tifffile.imread(tmp_path / "out/m_labels.tif"),
                          tifffile.imread(reference / "m_labels.tif"))


def test_a_worker_killed_mid_image_changes_nothing(client, images, reference, tmp_path):
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce(str(marker), "cellvit-block"), name="kill-once")
    try:
        report = segment_paths_distributed([images], tmp_path / "out",
                                           SegmentSettings(pattern="m.tif", **OPTIONS), client)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.exists() and report.done == 1 and not report.failed
    assert ((tmp_path / "out/m_labels.tif").read_bytes()
            == (reference / "m_labels.tif").read_bytes())
    client.wait_for_workers(2, timeout=60)


def _fail_second_block_row():
    """On a worker: block tasks whose core starts at row 512 raise."""
    from cellvit_cli.inference import distributed_blocks

    original = distributed_blocks.owned_cells

    def failing(decode, maps, block):
        if block.core[0].start == 512:
            raise RuntimeError("out of luck")
        return original(decode, maps, block)

    distributed_blocks.owned_cells = failing


def _restore():
    from cellvit_cli.inference import blocks, distributed_blocks

    distributed_blocks.owned_cells = blocks.owned_cells


def test_a_failing_block_is_named_and_the_run_exits_non_zero(client, images, reference,
                                                             tmp_path):
    by_value(__name__)
    client.run(_fail_second_block_row)
    try:
        result = CliRunner().invoke(main, [
            "segment", str(images), "-o", str(tmp_path), "--roi", "--geojson",
            "--cluster", client.scheduler.address, "--diameter", "17", "--block-mode", "on",
            "--block-size", "512"])
    finally:
        client.run(_restore)
    assert result.exit_code == 1, result.output
    assert "1 image(s) done, 0 skipped, 2 failed" in result.output
    assert ("m.tif: block (row 1, column 0; rows 512:1024, columns 0:512) failed: "
            "RuntimeError: out of luck") in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "small.geojson", "small_labels.tif", "small_rois.zip", "summary.csv"]


def test_an_image_its_plan_cannot_read_is_one_line(client, tmp_path):
    """A TIFF whose header is fine but whose pixels are not: the plan task's error (an
    InputError, pickled whole) names the file; the other image is done."""
    image, _ = load_nuclei_sample()
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in/ok.tif", image[:256, :256])
    tifffile.imwrite(tmp_path / "in/bad.tif", image, tile=(256, 256), compression="zlib")
    data = bytearray((tmp_path / "in/bad.tif").read_bytes())
    data[len(data) // 2:len(data) // 2 + 4000] = b"\xff" * 4000  # a tile's zlib stream
    (tmp_path / "in/bad.tif").write_bytes(bytes(data))
    settings = SegmentSettings(diameter=17.0, block_mode="on", block_size=512, progress=False)
    report = segment_paths_distributed([tmp_path / "in"], tmp_path / "out", settings, client)
    assert report.done == 1 and len(report.failed) == 1
    assert report.failed[0].startswith(str(tmp_path / "in/bad.tif") + ": cannot read")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok_labels.tif",
                                                                    "summary.csv"]


def test_packed_cells_round_trip_real_labels():
    _, labels = load_nuclei_sample()
    owned = labels.astype(np.uint32)
    packed = PackedCells.pack(owned)
    assert np.array_equal(packed.unpack(), owned) and packed.dtype == "<u2"
    assert len(packed.data) < owned.nbytes / 20  # what crosses the network per block
    wide = owned * 1000
    assert np.array_equal(PackedCells.pack(wide).unpack(), wide)
    empty = np.zeros((7, 9), np.uint32)
    assert np.array_equal(PackedCells.pack(empty).unpack(), empty)


@pytest.mark.slow
def test_a_4096_mosaic_on_workers_equals_block_mode(client, tmp_path):
    """The issue's proof: a 4096 x 4096 mosaic of real nuclei, blocks of 1024.

    The single process runs the network on as many torch threads as each worker (1): with
    other thread counts the network's float sums may differ in the last bits on some CPUs
    (an AMD EPYC with AVX2: 1,011 of 16.8 M pixels moved, the same cells; docs/distributed.md).
    """
    import torch

    image, labels = load_nuclei_sample()
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in/big.tif", make_mosaic(image, labels, (4096, 4096))[0])
    settings = SegmentSettings(diameter=17.0, block_mode="on", block_size=1024, progress=False)
    worker_threads = set(client.run(torch.get_num_threads).values())
    assert worker_threads == {1}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = segment_paths([tmp_path / "in"], tmp_path / "single", settings)
    finally:
        torch.set_num_threads(threads)
    report = segment_paths_distributed([tmp_path / "in"], tmp_path / "dask", settings, client)
    assert report.cells == single.cells > 4000
    assert ((tmp_path / "dask/big_labels.tif").read_bytes()
            == (tmp_path / "single/big_labels.tif").read_bytes())
