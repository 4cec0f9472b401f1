"""OME-Zarr and zarr arrays as inputs (read whole and region by region) and OME-Zarr labels
as an output (`segment --zarr`), against the TIFF path on the real nuclei sample."""

import json
import shutil

import numpy as np
import pytest
import tifffile

zarr = pytest.importorskip("zarr")

from cellvit_cli.bigtiff import open_regions  # noqa: E402
from cellvit_cli.inference.pipeline import SegmentSettings, segment_paths  # noqa: E402
from cellvit_cli.io import InputError, image_shape, read_image  # noqa: E402
from cellvit_cli.resolution import resolution_options  # noqa: E402
from cellvit_cli.samples import load_nuclei_sample, make_mosaic  # noqa: E402
from cellvit_cli.zarr_io import ZarrRegionReader, write_zarr_labels  # noqa: E402

AXES_5D = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
           {"name": "z", "type": "space"}, {"name": "y", "type": "space", "unit": "micrometer"},
           {"name": "x", "type": "space", "unit": "micrometer"}]


def zarr_labels(path) -> np.ndarray:
    """The (Y, X) labels of an OME-Zarr labels image."""
    return np.asarray(zarr.open_group(store=str(path), mode="r")["0"][:])


def _plain(path, data, chunks=None):
    array = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype,
                              chunks=chunks or data.shape)
    array[:] = data
    return path


def _ome(path, data, scale, axes=AXES_5D):
    group = zarr.open_group(store=str(path), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]
    array = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 1, 1, 128, 128))
    array[:] = data
    return path


@pytest.fixture(scope="module")
def nuclei():
    image, labels = load_nuclei_sample()
    return image


def test_plain_arrays_read_as_channels_first(tmp_path, nuclei):
    two = np.stack([nuclei, nuclei[::-1]])
    assert np.array_equal(read_image(_plain(tmp_path / "a.zarr", nuclei)).data, nuclei[None])
    assert np.array_equal(read_image(_plain(tmp_path / "cyx.zarr", two)).data, two)
    yxc = _plain(tmp_path / "yxc.zarr", np.moveaxis(two, 0, 2).copy())
    assert np.array_equal(read_image(yxc, channel=1).data, two[[1]])
    assert image_shape(yxc) == nuclei.shape


def test_ome_zarr_image_regions_and_pixel_size(tmp_path, nuclei):
    data = np.stack([nuclei, nuclei // 2])[None, :, None]  # (t, c, z, y, x)
    path = _ome(tmp_path / "img.ome.zarr", data, [1, 1, 1, 0.65, 0.65])
    regions = open_regions(path, channel=1)
    assert regions.shape == (1, *nuclei.shape) and regions.pixel_size == (0.65, 0.65)
    assert np.array_equal(regions.read(slice(100, 300), slice(7, 9)), data[0, 1:, 0, 100:300, 7:9])
    regions.close()


@pytest.mark.parametrize("make,problem", [
    (lambda p, n: _ome(p, np.stack([n, n])[None, None], [1, 1, 1, 1, 1]), "3D stacks"),
    (lambda p, n: zarr.open_group(store=str(p), mode="w"), "multiscales"),
    (lambda p, n: _plain(p, np.zeros((2, 2, 8, 8), np.uint8)), "2D image"),
    (lambda p, n: None, "no such zarr folder"),
])
def test_what_cannot_be_read_is_one_line_naming_it(tmp_path, nuclei, make, problem):
    path = tmp_path / "bad.zarr"
    make(path, nuclei)
    with pytest.raises(InputError, match=problem) as err:
        read_image(path)
    assert str(err.value).startswith(str(path))
    assert image_shape(path) is None


@pytest.mark.parametrize("block_mode", ["off", "on"])
def test_segment_reads_zarr_and_writes_ome_zarr_labels(tmp_path, block_mode):
    """The same mosaic as a TIFF and as a zarr array give the same labels, and --zarr writes
    them again as OME-Zarr (whole-image mode and block mode); a rerun skips both."""
    image, labels = load_nuclei_sample()
    mosaic = make_mosaic(image, labels, (768, 1024))[0]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in/t.tif", mosaic, **resolution_options((0.5, 0.5)))
    _plain(tmp_path / "in/z.zarr", mosaic, chunks=(256, 256))
    settings = SegmentSettings(diameter=17.0, block_mode=block_mode, block_size=512,
                               zarr=True, progress=False)
    out = tmp_path / "out"
    report = segment_paths([tmp_path / "in"], out, settings)
    assert (report.done, report.failed) == (2, [])
    tif = tifffile.imread(out / "t_labels.tif")
    assert tif.max() > 200 and np.array_equal(tifffile.imread(out / "z_labels.tif"), tif)
    written = zarr_labels(out / "t_labels.ome.zarr")
    assert written.dtype == np.uint32 and np.array_equal(written, tif)
    attrs = json.loads((out / "t_labels.ome.zarr/.zattrs").read_text())
    assert attrs["image-label"]["version"] == attrs["multiscales"][0]["version"] == "0.4"
    scale = attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [0.5, 0.5]  # the TIFF's pixel size
    assert not list(out.glob(".*"))
    again = segment_paths([tmp_path / "in"], out, settings)
    assert (again.done, again.skipped) == (0, 2)
    shutil.rmtree(out / "z_labels.ome.zarr")  # a missing export: that image is redone
    assert segment_paths([tmp_path / "in"], out, settings).done == 1


def test_write_zarr_labels_replaces_an_older_one(tmp_path):
    path = tmp_path / "l.ome.zarr"
    write_zarr_labels(path, np.ones((300, 200), np.int32))
    write_zarr_labels(path, np.full((30, 20), 7, np.uint16))
    assert np.array_equal(zarr_labels(path), np.full((30, 20), 7))
    assert ZarrRegionReader(path).shape == (1, 30, 20)
    assert [p.name for p in tmp_path.iterdir()] == ["l.ome.zarr"]
