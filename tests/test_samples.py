from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellvit_cli import samples

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
N_NUCLEI = 125  # objects in the sample; its label values run up to 183 with gaps


def _n_objects(labels):
    return int(np.count_nonzero(np.bincount(labels.ravel())[1:]))


def test_load_nuclei_sample():
    image, labels = samples.load_nuclei_sample()
    assert image.shape == labels.shape == (512, 512)
    assert image.dtype == np.uint16 and labels.dtype == np.int32
    assert _n_objects(labels) == N_NUCLEI


def test_shipped_sample_data_matches_stardist():
    image, labels = samples.load_nuclei_sample()
    shipped = tifffile.imread(SAMPLE_DATA / "nuclei_2d.tif")
    shipped_labels = tifffile.imread(SAMPLE_DATA / "masks" / "nuclei_2d.tif")
    assert shipped.dtype == shipped_labels.dtype == np.uint16
    np.testing.assert_array_equal(shipped, image)
    np.testing.assert_array_equal(shipped_labels, labels)
    assert sorted(p.name for p in SAMPLE_DATA.glob("*.tif*")) == ["nuclei_2d.tif"]


def test_mosaic_shape_count_and_unique_labels(nuclei):
    image, labels = nuclei
    mosaic, mosaic_labels = samples.make_mosaic(image, labels, (1024, 1536), seed=3)
    assert mosaic.shape == mosaic_labels.shape == (1024, 1536)
    assert mosaic.dtype == image.dtype and mosaic_labels.dtype == np.uint16
    n_tiles = 2 * 3
    assert _n_objects(mosaic_labels) == n_tiles * N_NUCLEI
    assert mosaic_labels.max() == n_tiles * N_NUCLEI  # numbered 1..N without gaps
    for k, (y0, x0) in enumerate(np.ndindex(2, 3)):
        tile = mosaic_labels[y0 * 512:(y0 + 1) * 512, x0 * 512:(x0 + 1) * 512]
        ids = np.unique(tile[tile > 0])
        assert ids.min() == k * N_NUCLEI + 1 and ids.max() == (k + 1) * N_NUCLEI
        assert len(ids) == N_NUCLEI


def test_mosaic_tiles_are_flips_or_rotations_of_the_sample(nuclei):
    image, labels = nuclei
    mosaic, mosaic_labels = samples.make_mosaic(image, labels, (1024, 1024), seed=0)
    variants = [np.rot90(a, k) for a in (image, image.T) for k in range(4)]
    seen = set()
    for y0, x0 in np.ndindex(2, 2):
        sl = np.s_[y0 * 512:(y0 + 1) * 512, x0 * 512:(x0 + 1) * 512]
        match = [i for i, v in enumerate(variants) if np.array_equal(mosaic[sl], v)]
        assert len(match) == 1
        seen.add(match[0])
        # labels moved with the image: same foreground, same object sizes
        fg = [np.rot90(a, k) > 0 for a in (labels, labels.T) for k in range(4)][match[0]]
        np.testing.assert_array_equal(mosaic_labels[sl] > 0, fg)
    assert len(seen) > 1  # not all copies identical


def test_mosaic_cropped_edges_and_seed(nuclei):
    image, labels = nuclei
    cropped = samples.make_mosaic(image, labels, (700, 600), seed=1)
    full = samples.make_mosaic(image, labels, (1024, 1024), seed=1)  # same 2 x 2 grid
    for part, whole in zip(cropped, full):
        np.testing.assert_array_equal(part, whole[:700, :600])
    other = samples.make_mosaic(image, labels, (1024, 1024), seed=2)
    assert not np.array_equal(other[0], full[0])


def test_mosaic_label_dtype_rule():
    assert samples.mosaic_label_dtype(65535) == np.uint16
    assert samples.mosaic_label_dtype(65536) == np.uint32
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    labels = np.arange(256).reshape(16, 16)  # 255 one-pixel objects and one background pixel
    _, small = samples.make_mosaic(image, labels, (16 * 16, 16 * 16))  # 256 copies
    assert small.dtype == np.uint16 and small.max() == 256 * 255
    _, big = samples.make_mosaic(image, labels, (16 * 17, 16 * 16))  # 272 copies
    assert big.dtype == np.uint32
    assert big.max() == 272 * 255 and len(np.unique(big)) == 272 * 255 + 1


def test_mosaic_rejects_mismatched_inputs(nuclei):
    image, labels = nuclei
    with pytest.raises(ValueError, match="must be equal"):
        samples.make_mosaic(image, labels[:100], (512, 512))


def test_write_mosaic_tiffs_matches_in_memory_mosaic(nuclei, tmp_path):
    image, labels = nuclei
    shape = (900, 1100)
    samples.write_mosaic_tiffs(tmp_path / "m.tif", tmp_path / "masks" / "m.tif", shape, seed=2)
    expected_image, expected_labels = samples.make_mosaic(image, labels, shape, seed=2)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.pages[0].is_tiled
        np.testing.assert_array_equal(tif.asarray(), expected_image)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "masks" / "m.tif"), expected_labels)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.tif", "m.tif", "masks"]
