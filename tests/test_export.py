import csv
import json

import numpy as np
import pytest
import roifile
import tifffile
from PIL import Image as PILImage
from skimage.draw import polygon
from skimage.segmentation import find_boundaries

from cellvit_cli import export


def iou_with_polygon(labels, label, xy_edge):
    """IoU of object `label` with the polygon xy (pixel-edge x, y) rasterised at pixel centres."""
    rr, cc = polygon(xy_edge[:, 1] - 0.5, xy_edge[:, 0] - 0.5, labels.shape)
    drawn = np.zeros(labels.shape, bool)
    drawn[rr, cc] = True
    obj = labels == label
    return (drawn & obj).sum() / (drawn | obj).sum()


def _object_ids(labels):
    ids = np.unique(labels)
    return ids[ids > 0]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_roi_zip_round_trip(nuclei, tmp_path):
    _, labels = nuclei
    path = tmp_path / "cells_rois.zip"
    export.write_roi_zip(labels, path)
    rois = roifile.roiread(path)
    assert len(rois) == len(_object_ids(labels))
    for roi in rois:
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        label = int(roi.name.removeprefix("cell_"))
        assert iou_with_polygon(labels, label, roi.coordinates()) >= 0.8, roi.name


def test_geojson_round_trip(nuclei, tmp_path):
    _, labels = nuclei
    path = tmp_path / "cells.geojson"
    export.write_geojson(labels, path, pixel_size=(0.5, 0.25), classification="Nucleus")
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["properties"]["label"] for f in features] == list(_object_ids(labels))
    areas = np.bincount(labels.ravel())
    for feature in features:
        props = feature["properties"]
        assert feature["geometry"]["type"] == "Polygon"
        assert props["objectType"] == "detection"
        assert props["classification"] == {"name": "Nucleus"}
        assert props["area"] == areas[props["label"]]
        assert props["area_um2"] == pytest.approx(areas[props["label"]] * 0.125)
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1])
        assert export._signed_area(ring) > 0  # counter-clockwise in (x, y)
        assert iou_with_polygon(labels, props["label"], ring) >= 0.8


def test_measurements_csv(nuclei, tmp_path):
    image, labels = nuclei
    path = tmp_path / "cells.csv"
    export.write_measurements(labels, image, path, pixel_size=(0.5, 0.5))
    rows = _read_csv(path)
    ids = _object_ids(labels)
    assert [int(r["label"]) for r in rows] == list(ids)
    areas = np.bincount(labels.ravel())[ids]
    assert [int(r["area"]) for r in rows] == list(areas)
    assert np.allclose([float(r["area_um2"]) for r in rows], areas * 0.25)
    means = np.bincount(labels.ravel(), weights=image.ravel())[ids] / areas
    assert np.allclose([float(r["mean_intensity_c0"]) for r in rows], means, rtol=1e-5)
    for name in ("centroid_y", "centroid_x", "bbox_y0", "bbox_x1", "eccentricity",
                 "solidity", "perimeter", "perimeter_um"):
        assert name in rows[0]


def test_measure_multichannel(nuclei):
    image, labels = nuclei
    stack = np.stack([image, image.astype(np.float32) * 2])
    columns = export.measure(labels, stack, shape_features=False)
    assert np.allclose(columns["mean_intensity_c1"], columns["mean_intensity_c0"] * 2)
    assert "solidity" not in columns
    assert all(len(v) == len(_object_ids(labels)) for v in columns.values())


def test_overlay_png(nuclei, tmp_path):
    image, labels = nuclei
    path = tmp_path / "cells_overlay.png"
    export.write_overlay(image, labels, path)
    rgb = np.asarray(PILImage.open(path))
    assert rgb.shape == labels.shape + (3,) and rgb.dtype == np.uint8
    outline = find_boundaries(labels, mode="inner")
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
    assert not grey[outline].any()  # every outline pixel has a saturated colour
    assert grey[~outline].all()


def test_overlay_rgb_input(nuclei):
    image, labels = nuclei
    stack = np.stack([image, np.zeros_like(image), image])
    rgb = export.overlay_rgb(stack, labels)
    inside = ~find_boundaries(labels, mode="inner")
    assert (rgb[..., 1][inside] == 0).all() and rgb[..., 0][inside].max() == 255
    with pytest.raises(ValueError, match="differ in shape"):
        export.overlay_rgb(image[:100], labels)


def test_write_maps(tmp_path):
    rng = np.random.default_rng(0)
    maps = {"star": rng.random((5, 32, 48), np.float32),
            "flow": rng.random((3, 32, 48), np.float32)}
    paths = export.write_maps(maps, tmp_path / "img_maps.tif")
    assert [p.name for p in paths] == ["img_maps_star.tif", "img_maps_flow.tif"]
    for head, path in zip(maps, paths):
        with tifffile.TiffFile(path) as tif:
            assert tif.series[0].axes == "CYX"
            np.testing.assert_array_equal(tif.asarray(), maps[head])
            assert tif.imagej_metadata["Labels"] == export.map_channel_names(head, len(maps[head]))
    assert export.map_channel_names("star", 3) == ["prob", "dist_0", "dist_1"]


def test_empty_labels(tmp_path):
    labels = np.zeros((40, 30), np.int32)
    image = np.arange(1200, dtype=np.uint16).reshape(40, 30)
    export.write_roi_zip(labels, tmp_path / "e.zip")
    export.write_geojson(labels, tmp_path / "e.geojson")
    export.write_measurements(labels, image, tmp_path / "e.csv")
    export.write_overlay(image, labels, tmp_path / "e.png")
    assert roifile.roiread(tmp_path / "e.zip") == []
    assert json.loads((tmp_path / "e.geojson").read_text())["features"] == []
    header = (tmp_path / "e.csv").read_text().splitlines()
    assert len(header) == 1 and header[0].startswith("label,centroid_y,centroid_x,area,")
    assert np.asarray(PILImage.open(tmp_path / "e.png")).shape == (40, 30, 3)


def test_outputs_atomic_and_inputs_untouched(nuclei, tmp_path):
    image, labels = nuclei
    before = labels.copy(), image.copy()
    export.write_roi_zip(labels, tmp_path / "a.zip")
    export.write_geojson(labels, tmp_path / "a.geojson")
    export.write_measurements(labels, image, tmp_path / "a.csv")
    export.write_overlay(image, labels, tmp_path / "a.png")
    np.testing.assert_array_equal(labels, before[0])
    np.testing.assert_array_equal(image, before[1])
    with pytest.raises(ValueError):
        export.write_overlay(image[:10], labels, tmp_path / "bad.png")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["a.csv", "a.geojson", "a.png", "a.zip"]


def test_outlines_exact_on_small_shapes():
    labels = np.zeros((12, 12), np.int32)
    labels[1, 1] = 1                    # single pixel
    labels[3:6, 3:9] = 2                # rectangle
    labels[8, 8] = labels[9, 9] = 3     # diagonal touch only
    outlines = dict(export.iter_outlines(labels))
    assert sorted(outlines) == [1, 2, 3]
    for label, xy in outlines.items():
        assert iou_with_polygon(labels, label, xy) == 1.0


def test_cells_written_in_parts_equal_the_whole(nuclei, tmp_path):
    """The writers take cell sets one at a time (block mode's way): the cells up to label
    90 as they are, the others cropped to their box, numbered from 1 with label_offset
    90: the same files as the whole labels written at once."""
    image, labels = nuclei
    first = np.where(labels <= 90, labels, 0)
    rest = np.where(labels > 90, labels - 90, 0)
    ys, xs = (np.flatnonzero(rest.any(axis=a)) for a in (1, 0))
    box = (slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    parts = [export.Cells(first, image=image[None]),
             export.Cells(rest[box], (ys[0], xs[0]), 90, image[None][(slice(None), *box)])]
    writers = {"zip": export.RoiZipWriter(tmp_path / "p.zip"),
               "geojson": export.GeoJsonWriter(tmp_path / "p.geojson", (0.5, 0.5)),
               "csv": export.MeasurementsWriter(tmp_path / "p.csv", (0.5, 0.5),
                                                image_name="img.tif")}
    for writer in writers.values():
        with writer:
            for cells in parts:
                writer.add(cells)
    export.write_roi_zip(labels, tmp_path / "w.zip")
    export.write_geojson(labels, tmp_path / "w.geojson", (0.5, 0.5))
    export.write_measurements(labels, image, tmp_path / "w.csv", (0.5, 0.5), image_name="img.tif")
    assert ([r.tobytes() for r in roifile.roiread(tmp_path / "p.zip")]
            == [r.tobytes() for r in roifile.roiread(tmp_path / "w.zip")])
    assert (tmp_path / "p.geojson").read_text() == (tmp_path / "w.geojson").read_text()
    parted, whole = _read_csv(tmp_path / "p.csv"), _read_csv(tmp_path / "w.csv")
    assert [r["label"] for r in parted] == [r["label"] for r in whole]
    for name in whole[0]:
        if name != "image":
            assert np.allclose([float(r[name]) for r in parted],
                               [float(r[name]) for r in whole], rtol=0, atol=2e-6), name
    assert all(writer.written for writer in writers.values())
