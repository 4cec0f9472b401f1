"""The network's tile bar has a total: the tiles of the images found, from their headers,
at the fixed zoom (then exact from the start) or, with automatic size, corrected as each
image's zoom is known; it ends equal to the tiles predicted."""

import io
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from tqdm.auto import tqdm

from cellvit_cli.inference import pipeline
from cellvit_cli.inference.pipeline import SegmentSettings, segment_paths
from cellvit_cli.inference.predictor import Predictor
from cellvit_cli.samples import load_nuclei_sample
from conftest import save_packed_cells_model


class _RecordedBar(tqdm):
    """A tqdm bar that shows (into a string) and remembers every total it is given."""

    bars: list["_RecordedBar"] = []

    def __init__(self, *args, **kwargs):
        self.totals = []
        super().__init__(*args, **{**kwargs, "disable": False, "file": io.StringIO()})
        _RecordedBar.bars.append(self)

    def __setattr__(self, name, value):
        if name == "total":
            self.totals.append(value)
        super().__setattr__(name, value)


@pytest.fixture(scope="module")
def packed_model(tmp_path_factory):
    return save_packed_cells_model(tmp_path_factory.mktemp("model") / "packed")


@pytest.fixture
def folder(tmp_path):
    """Two images of different sizes and one file that is no TIFF."""
    image = load_nuclei_sample()[0]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "a.tif", image[:300, :200])
    tifffile.imwrite(tmp_path / "in" / "b.tif", image[:200, :520])
    (tmp_path / "in" / "c.tif").write_bytes(b"not a tiff")
    return tmp_path / "in"


@pytest.mark.parametrize("size", [{"scale": 1.0}, {}])
def test_the_tile_bar_has_a_total(folder, tmp_path, packed_model, monkeypatch, size):
    monkeypatch.setattr(pipeline, "tqdm", _RecordedBar)
    monkeypatch.setattr(_RecordedBar, "bars", [])
    settings = SegmentSettings(tile_size=256, overlap=32, device="cpu", **size)
    report = segment_paths([folder], tmp_path / "out", settings, packed_model)
    assert report.done == 2 and len(report.failed) == 1
    (bar,) = [b for b in _RecordedBar.bars if b.unit == "tile"]
    assert bar.totals[0] is None and bar.n > 0
    assert bar.total == bar.n  # ends equal to the tiles predicted
    if size:  # fixed zoom: the total from the headers is exact from the start
        assert bar.totals[1:] == [bar.n]
        predictor = pipeline.Segmenter.from_settings(settings, packed_model).predictor
        assert bar.n == len(predictor.plan((300, 200))) + len(predictor.plan((200, 520)))


def test_the_total_follows_the_zooms_as_they_become_known(folder):
    """Automatic size: a.tif turns out to need zoom 2, b.tif skips the network (its size
    probes segmented it, or it failed): the total becomes a.tif's tiles at zoom 2."""
    predictor = Predictor(None, tile_size=256, overlap=32, size_multiple=16, precision=None)
    jobs = [SimpleNamespace(path=folder / name) for name in ("a.tif", "b.tif", "c.tif")]
    bar = _RecordedBar(unit="tile")
    tiles = pipeline._TileTotal(bar, predictor, jobs, 1.0)
    assert bar.total == len(predictor.plan((300, 200))) + len(predictor.plan((200, 520)))
    tiles.settle(jobs[0], np.zeros((1, 600, 400), np.float32))
    tiles.settle(jobs[1], None)
    tiles.settle(jobs[2], None)
    assert bar.total == len(predictor.plan((600, 400))) > len(predictor.plan((300, 200)))
