import hashlib
import os
import warnings

import numpy as np
import pytest
import tifffile

from cellvit_cli.io import (InputError, atomic_path, check_pixels, make_folder, read_image,
                            read_labels, temp_target, write_labels)

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]


def _as(image: np.ndarray, dtype) -> np.ndarray:
    """The real sample image scaled into `dtype`'s range."""
    scaled = image.astype(np.float64) / image.max()
    return (scaled * 200).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_grey_round_trip(tmp_path, nuclei, dtype, compression):
    image = _as(nuclei[0], dtype)
    path = tmp_path / "grey.tif"
    tifffile.imwrite(path, image, compression=compression)
    result = read_image(path)
    assert result.data.shape == (1, 512, 512)
    assert result.data.dtype == dtype
    np.testing.assert_array_equal(result.data[0], image)
    assert result.axes == "YX"
    assert result.pixel_size is None
    if compression is None:
        assert isinstance(result.data.base, np.memmap) or isinstance(result.data, np.memmap)


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_first_and_last(tmp_path, nuclei, dtype):
    channels = np.stack([_as(nuclei[0], dtype), _as(nuclei[1], dtype)])
    tifffile.imwrite(tmp_path / "cyx.tif", channels)
    tifffile.imwrite(tmp_path / "yxc.tif", np.moveaxis(channels, 0, -1))
    for name in ("cyx.tif", "yxc.tif"):
        result = read_image(tmp_path / name)
        np.testing.assert_array_equal(result.data, channels)


def test_imagej_channels_and_rgb(tmp_path, nuclei):
    channels = np.stack([_as(nuclei[0], np.uint16)] * 3) + np.arange(3, dtype=np.uint16)[:, None, None]
    tifffile.imwrite(tmp_path / "ij.tif", channels, imagej=True, metadata={"axes": "CYX"})
    result = read_image(tmp_path / "ij.tif")
    assert result.axes == "CYX"
    np.testing.assert_array_equal(result.data, channels)
    rgb = np.moveaxis(_as(channels, np.uint8), 0, -1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", compression="zlib")
    result = read_image(tmp_path / "rgb.tif")
    assert result.axes == "YXS"
    np.testing.assert_array_equal(result.data, np.moveaxis(rgb, -1, 0))


def test_channel_selection(tmp_path, nuclei):
    channels = np.stack([_as(nuclei[0], np.uint16), _as(nuclei[1], np.uint16)])
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, channels)
    result = read_image(path, channel=1)
    assert result.data.shape == (1, 512, 512)
    np.testing.assert_array_equal(result.data[0], channels[1])
    with pytest.raises(InputError, match="channel 2 out of range"):
        read_image(path, channel=2)


def test_imagej_pixel_size(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((32, 48), np.uint16), imagej=True,
                     resolution=(1 / 0.5, 1 / 0.25), metadata={"unit": "micron"})
    assert read_image(path).pixel_size == pytest.approx((0.25, 0.5))
    tifffile.imwrite(path, np.zeros((32, 48), np.uint16), imagej=True,
                     resolution=(1 / 500, 1 / 500), metadata={"unit": "nm"})
    assert read_image(path).pixel_size == pytest.approx((0.5, 0.5))


def test_ome_pixel_size(tmp_path):
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, np.zeros((2, 32, 48), np.uint16), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.325})
    result = read_image(path)
    assert result.data.shape == (2, 32, 48)
    assert result.pixel_size == pytest.approx((0.325, 0.65))


def test_resolution_tag_pixel_size(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, np.zeros((32, 48), np.uint8), resolution=(1e4 / 0.4, 1e4 / 0.4),
                     resolutionunit="CENTIMETER")
    assert read_image(path).pixel_size == pytest.approx((0.4, 0.4))
    tifffile.imwrite(path, np.zeros((32, 48), np.uint8), resolution=(72, 72),
                     resolutionunit="INCH")
    assert read_image(path).pixel_size is None  # a display default, not a microscope's


def test_labels_round_trip_uint16(tmp_path, nuclei):
    labels = nuclei[1]
    path = tmp_path / "labels.tif"
    write_labels(path, labels, pixel_size=(0.65, 0.5))
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dtype == np.uint16
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    result = read_labels(path)
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, labels)
    assert read_image(path).pixel_size == pytest.approx((0.65, 0.5), rel=1e-7)


def test_labels_round_trip_uint32(tmp_path, nuclei):
    labels = nuclei[1] * 1000
    path = tmp_path / "labels.tif"
    write_labels(path, labels, pixel_size=(0.3, 0.3))
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dtype == np.uint32
    np.testing.assert_array_equal(read_labels(path), labels)
    assert read_image(path).pixel_size == pytest.approx((0.3, 0.3), rel=1e-7)


def test_read_labels_beyond_int32(tmp_path):
    labels = np.zeros((8, 8), np.uint32)
    labels[2:4, 2:4] = 2**31 + 5
    tifffile.imwrite(tmp_path / "big.tif", labels)
    result = read_labels(tmp_path / "big.tif")
    assert result.dtype == np.uint32 and result.max() == 2**31 + 5


def test_write_labels_atomic_and_leaves_input(tmp_path, nuclei):
    path = tmp_path / "labels.tif"
    write_labels(path, nuclei[1])
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    read_labels(path)
    read_image(path)
    assert hashlib.sha1(path.read_bytes()).hexdigest() == digest
    with pytest.raises(ValueError):
        write_labels(path, nuclei[1].astype(np.float32))
    assert hashlib.sha1(path.read_bytes()).hexdigest() == digest
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]


def test_atomic_path(tmp_path):
    target = tmp_path / "report.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".json" and tmp != target
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "done"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_temp_target_inverts_atomic_path_names(tmp_path):
    for name in ("a_labels.tif", "a.geojson", "x.ome_rois.zip", "no_suffix"):
        with atomic_path(tmp_path / name) as tmp:
            assert temp_target(tmp) == tmp_path / name
            tmp.write_text("done")
    wide = ".a_labels.tmp-0123abcd.tif.uint32.tif"  # block mode's first pass
    assert temp_target(tmp_path / wide) == tmp_path / "a_labels.tif"
    for name in ("a_labels.tif", "._a.tif", ".a.tmp-xyz.tif", ".hidden.tif"):
        assert temp_target(tmp_path / name) is None


def test_make_folder(tmp_path):
    make_folder(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir()
    make_folder(tmp_path / "new")  # existing: fine
    (tmp_path / "notes.txt").write_text("a file")
    for path, problem in [(tmp_path / "notes.txt", "is a file"),
                          (tmp_path / "notes.txt" / "out" / "sub", "lies under")]:
        with pytest.raises(InputError, match=problem) as info:
            make_folder(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
        assert str(tmp_path / "notes.txt") in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_make_folder_read_only_parent(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o555)
    with pytest.raises(InputError, match="cannot create the folder"):
        make_folder(parent / "out")


def test_check_pixels():
    for dtype in (bool, np.uint8, np.int32, np.float32):
        check_pixels("a.tif", np.ones((1, 3, 3), dtype))
    data = np.ones((2, 2100, 4), np.float32)
    data[1, 2099, 3] = -np.inf  # in the last row block of the last channel
    with pytest.raises(InputError, match="a.tif: image contains NaN or infinite"):
        check_pixels("a.tif", data)
    with pytest.raises(InputError, match="a.tif: unsupported pixel type complex64"):
        check_pixels("a.tif", np.ones((1, 3, 3), np.complex64))


def _write_bad(tmp_path, case: str):
    """Create the bad input `case`; return its path."""
    path = tmp_path / f"{case}.tif"
    good = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    if case == "missing":
        return path
    if case == "folder":
        path.mkdir()
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "not_tiff":
        path.write_text("sample name,well\nA1,3\n")
    elif case in ("truncated", "truncated_zlib"):
        tifffile.imwrite(path, good, compression="zlib" if case.endswith("zlib") else None)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif case == "corrupt_header":
        tifffile.imwrite(path, good)
        path.write_bytes(path.read_bytes()[:100])
    elif case == "zero_size":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tifffile.imwrite(path, np.zeros((0, 16), np.uint8))
    elif case in ("nan", "inf"):
        data = good.astype(np.float32)
        data[5, 7] = np.nan if case == "nan" else np.inf
        tifffile.imwrite(path, data)
    elif case == "zstack":
        tifffile.imwrite(path, np.zeros((5, 64, 64), np.uint16), imagej=True,
                         metadata={"axes": "ZYX"})
    elif case == "timeseries":
        tifffile.imwrite(path, np.zeros((3, 64, 64), np.uint16), imagej=True,
                         metadata={"axes": "TYX"})
    elif case == "bare_stack":
        tifffile.imwrite(path, np.zeros((40, 64, 64), np.uint16))
    elif case == "four_dims":
        tifffile.imwrite(path, np.zeros((2, 3, 64, 64), np.uint16), photometric="minisblack")
    elif case == "complex":
        tifffile.imwrite(path, np.zeros((16, 16), np.complex64))
    return path


BAD_IMAGES = {
    "missing": "no such file", "folder": "folder", "empty_file": "empty file",
    "not_tiff": "not a TIFF", "truncated": "cannot read", "truncated_zlib": "cannot read",
    "corrupt_header": "cannot read", "zero_size": "zero-sized", "nan": "NaN",
    "inf": "infinite", "zstack": "not supported yet", "timeseries": "not supported yet",
    "bare_stack": "not supported yet", "four_dims": "not supported yet",
    "complex": "unsupported pixel type",
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_one_line_input_error(tmp_path, case):
    path = _write_bad(tmp_path, case)
    with pytest.raises(InputError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert BAD_IMAGES[case] in message
    assert "\n" not in message


@pytest.mark.parametrize("case, problem", [
    ("float", "must be integers"), ("negative", "non-negative"), ("rgb", "one channel"),
])
def test_bad_labels(tmp_path, case, problem):
    path = tmp_path / f"{case}.tif"
    labels = np.zeros((32, 32), np.int16)
    labels[4:9, 4:9] = 3
    if case == "float":
        tifffile.imwrite(path, labels.astype(np.float32))
    elif case == "negative":
        labels[0, 0] = -1
        tifffile.imwrite(path, labels)
    else:
        tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=problem) as info:
        read_labels(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_bad_labels_file_errors_name_the_file(tmp_path):
    path = _write_bad(tmp_path, "truncated_zlib")
    with pytest.raises(InputError, match=str(path)):
        read_labels(path)
