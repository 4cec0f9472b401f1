"""`segment_paths_distributed` and `segment --cluster` on a LocalCluster of 2 worker
processes, against the single-process `segment_paths`: with conftest's packed-cells model
(at its own size: --diameter 12, zoom 1) and with the shipped model."""

import csv
from pathlib import Path

import pytest
import tifffile
import torch
from click.testing import CliRunner

distributed = pytest.importorskip("distributed")

from cellvit_cli.cli import main  # noqa: E402
from cellvit_cli.cluster import parse_cluster  # noqa: E402
from cellvit_cli.inference.distributed import segment_paths_distributed  # noqa: E402
from cellvit_cli.inference.pipeline import SegmentSettings, segment_paths  # noqa: E402
from cellvit_cli.samples import load_nuclei_sample  # noqa: E402
from conftest import exit_code_and_heavy_imports, save_packed_cells_model  # noqa: E402
from dask_helpers import KillOnce  # noqa: E402

NAMES = ("a", "b", "c", "d")
OPTIONS = dict(diameter=12.0, tile_size=128, overlap=32, progress=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A ViT-tiny folder that sees packed round cells everywhere (see conftest)."""
    return save_packed_cells_model(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The nuclei sample cut into 4 images of 256 x 256 px, and a corrupt TIFF."""
    image, _ = load_nuclei_sample()
    folder = tmp_path_factory.mktemp("in")
    for i, name in enumerate(NAMES):
        y, x = divmod(i, 2)
        tifffile.imwrite(folder / f"{name}.tif", image[256 * y:256 * (y + 1), 256 * x:256 * (x + 1)])
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 50)
    return folder


@pytest.fixture(scope="module")
def reference(images, model_dir, tmp_path_factory):
    """The single-process run's output folder."""
    out = tmp_path_factory.mktemp("single")
    report = segment_paths([images], out, SegmentSettings(model=model_dir, **OPTIONS))
    assert report.done == 4 and len(report.failed) == 1
    return out


def _labels(folder: Path) -> dict[str, bytes]:
    return {name: (folder / f"{name}_labels.tif").read_bytes() for name in NAMES}


def _rows(folder: Path) -> list[dict]:
    with open(folder / "summary.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_folder_matches_one_process_and_resumes(client, images, model_dir, reference, tmp_path):
    settings = SegmentSettings(model=model_dir, **OPTIONS)
    report = segment_paths_distributed([images], tmp_path, settings, client)
    assert (report.done, report.skipped) == (4, 0)
    assert len(report.failed) == 1 and "broken.tif" in report.failed[0]
    assert _labels(tmp_path) == _labels(reference)  # byte-identical files
    assert _rows(tmp_path) == _rows(reference)
    assert report.cells == sum(int(row["cells"] or 0) for row in _rows(tmp_path))

    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*_labels.tif")}
    again = segment_paths_distributed([images], tmp_path, settings, client)
    assert (again.done, again.skipped, len(again.failed)) == (0, 4, 1)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*_labels.tif")} == mtimes


def test_shipped_model_same_labels(client, images, tmp_path):
    """A trained model, whose labels differ from image to image: the workers (one torch
    thread each) write the same bytes as one process."""
    settings = SegmentSettings(diameter=17.0, progress=False)
    single = segment_paths([images], tmp_path / "single", settings)
    report = segment_paths_distributed([images], tmp_path / "dask", settings, client)
    assert report.done == single.done == 4 and report.cells == single.cells > 80
    assert len(set(_labels(tmp_path / "single").values())) == 4
    assert _labels(tmp_path / "dask") == _labels(tmp_path / "single")


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")
def test_cli_cluster_local(images, model_dir, reference, tmp_path):
    args = ["segment", str(images), "-o", str(tmp_path), "--model", str(model_dir),
            "--diameter", "12", "--tile-size", "128", "--overlap", "32", "--cluster", "local:2"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "4 image(s) done, 0 skipped, 1 failed" in result.output
    assert result.output.count("broken.tif") == 1  # one line naming it
    assert _labels(tmp_path) == _labels(reference)


def test_cli_scheduler_address(client, images, model_dir, reference, tmp_path):
    args = ["segment", str(images), "--model", str(model_dir), "--diameter", "12",
            "--tile-size", "128", "--overlap", "32", "--cluster", client.scheduler.address]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "out")])
    assert result.exit_code == 1 and "4 image(s) done, 0 skipped, 1 failed" in result.output
    assert _labels(tmp_path / "out") == _labels(reference)
    if not torch.cuda.is_available():  # the workers check the device: each image fails
        result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "cuda"),
                                           "--device", "cuda"])
        assert result.exit_code == 1 and "0 image(s) done, 0 skipped, 5 failed" in result.output
        assert "task failed: ValueError" in result.output and "CUDA" in result.output


@pytest.mark.parametrize("spec,message", [("local:0", "N >= 1"), ("nowhere", "local:N"),
                                          ("missing.json", "no such scheduler file")])
def test_cluster_usage_errors(images, tmp_path, spec, message):
    result = CliRunner().invoke(main, ["segment", str(images), "-o", str(tmp_path),
                                       "--cluster", spec])
    assert result.exit_code == 2 and message in result.output


def test_bad_cluster_comes_before_the_heavy_imports():
    assert exit_code_and_heavy_imports(['segment', '--cluster', 'local:0', 'x', '-o', 'y'], {'torch', 'distributed'}) == ["2"]


def test_parse_cluster(tmp_path):
    (tmp_path / "scheduler.json").write_text("{}")
    assert parse_cluster("local:3") == ("local", 3)
    assert parse_cluster("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    assert parse_cluster(str(tmp_path / "scheduler.json"))[0] == "file"


def test_without_dask_a_usage_error(images, tmp_path, monkeypatch):
    import cellvit_cli.cluster as module

    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name: None)
    result = CliRunner().invoke(main, ["segment", str(images), "-o", str(tmp_path),
                                       "--cluster", "local:2"])
    assert result.exit_code == 2 and "pip install 'cellvit-cli[distributed]'" in result.output


def test_unreachable_scheduler(images, model_dir, tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(main, ["segment", str(images), "-o", str(tmp_path),
                                           "--model", str(model_dir), "--diameter", "12",
                                           "--cluster", "tcp://127.0.0.1:9"])
    assert result.exit_code == 1 and "cannot reach the dask scheduler" in result.output


def test_killed_worker_same_labels(client, images, model_dir, reference, tmp_path):
    marker = tmp_path / "killed"
    client.register_plugin(KillOnce(str(marker), "cellvit-segment"), name="kill-once")
    try:
        report = segment_paths_distributed([images], tmp_path / "out",
                                           SegmentSettings(model=model_dir, **OPTIONS), client)
    finally:
        client.unregister_worker_plugin("kill-once")
    assert marker.exists()
    assert report.done == 4 and len(report.failed) == 1  # the lost task was rerun
    assert _labels(tmp_path / "out") == _labels(reference)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left
