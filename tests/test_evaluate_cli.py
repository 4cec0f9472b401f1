import csv
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from cellvit_cli import metrics
from cellvit_cli.cli.evaluate import evaluate
from cellvit_cli.io import write_labels


def _predict(labels: np.ndarray, seed: int) -> np.ndarray:
    """A plausible prediction: 10% of objects dropped, the rest shifted by up to 2 px."""
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)[1:]
    pred = np.where(np.isin(labels, rng.choice(ids, len(ids) // 10)), 0, labels)
    return np.roll(pred, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))


@pytest.fixture
def folders(tmp_path, nuclei):
    """gt/img{0..3}.tif (quarters of the stardist sample) and pred/img{i}_labels.tif."""
    labels = nuclei[1]
    quarters = [labels[:256, :256], labels[:256, 256:], labels[256:, :256], labels[256:, 256:]]
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    gts, preds = [], []
    for i, gt in enumerate(quarters):
        pred = _predict(gt, i)
        write_labels(gt_dir / f"img{i}.tif", gt)
        write_labels(pred_dir / f"img{i}_labels.tif", pred)
        gts.append(gt), preds.append(pred)
    tifffile.imwrite(pred_dir / "img0_maps_star.tif", np.zeros((3, 8, 8), np.float32),
                     photometric="minisblack")
    return gt_dir, pred_dir, gts, preds


def _run(*args):
    return CliRunner().invoke(evaluate, [str(a) for a in args])


def test_report(tmp_path, folders):
    gt_dir, pred_dir, gts, preds = folders
    out = tmp_path / "report"
    result = _run("--pred", pred_dir, "--gt", gt_dir, "-o", out)
    assert result.exit_code == 0, result.output
    assert "4 images" in result.output and "ap_50" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["per_image.csv", "scores.png", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 4
    assert summary["iou_thresholds"] == list(metrics.DEFAULT_IOU_THRESHS)
    expected = metrics.average_precision(gts, preds, 0.5)
    assert summary["headline"]["ap_50"] == pytest.approx(expected)
    assert summary["pooled"][0]["ap"] == pytest.approx(expected)
    assert summary["settings"]["gt_suffix_used"] == ""
    with open(out / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 10 and rows[0]["image"] == "img0"
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"


def test_table_only_without_output(tmp_path, folders, monkeypatch):
    gt_dir, pred_dir, *_ = folders
    monkeypatch.chdir(tmp_path)
    result = _run("--pred", pred_dir, "--gt", gt_dir, "--iou-thresholds", "0.5,0.75")
    assert result.exit_code == 0, result.output
    assert " 0.75 " in result.output and " 0.55 " not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "pred"]


def test_masks_suffix_is_found(tmp_path, folders):
    gt_dir, pred_dir, *_ = folders
    for path in list(gt_dir.iterdir()):
        path.rename(gt_dir / f"{path.stem}_masks.tif")
    result = _run("--pred", pred_dir, "--gt", gt_dir, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["n_images"] == 4


def test_unmatched_files(tmp_path, folders):
    gt_dir, pred_dir, *_ = folders
    (gt_dir / "img3.tif").unlink()
    result = _run("--pred", pred_dir, "--gt", gt_dir)
    assert result.exit_code == 2
    assert "img3_labels.tif" in result.output and "--skip-unmatched" in result.output
    result = _run("--pred", pred_dir, "--gt", gt_dir, "--skip-unmatched")
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output


def test_no_pairs(tmp_path, folders):
    gt_dir, _, *_ = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("--pred", empty, "--gt", gt_dir, "--skip-unmatched")
    assert result.exit_code == 2 and "no pairs" in result.output
    assert f"{empty}: no label images" in result.output and "img0.tif" in result.output
    assert "--pred-suffix" in result.output


def test_missing_folder(tmp_path, folders):
    gt_dir, *_ = folders
    result = _run("--pred", tmp_path / "nowhere", "--gt", gt_dir)
    assert result.exit_code == 2 and "does not exist" in result.output


def test_bad_thresholds(folders):
    gt_dir, pred_dir, *_ = folders
    for text in ("1.5", "0.5:x:0.9", "0.5,,abc"):
        result = _run("--pred", pred_dir, "--gt", gt_dir, "--iou-thresholds", text)
        assert result.exit_code == 2 and "--iou-thresholds" in result.output


def test_corrupt_label_file(tmp_path, folders):
    gt_dir, pred_dir, *_ = folders
    bad = pred_dir / "img2_labels.tif"
    bad.write_bytes(bad.read_bytes()[:300])
    result = _run("--pred", pred_dir, "--gt", gt_dir, "-o", tmp_path / "r")
    assert result.exit_code == 1
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1 and str(bad) in error_lines[0]
    assert not (tmp_path / "r").exists()


def test_shape_mismatch(folders):
    gt_dir, pred_dir, *_ = folders
    write_labels(pred_dir / "img1_labels.tif", np.ones((10, 12), np.int32))
    result = _run("--pred", pred_dir, "--gt", gt_dir)
    assert result.exit_code == 1
    assert "img1_labels.tif" in result.output and "differs" in result.output


def test_help_has_example():
    result = _run("--help")
    assert result.exit_code == 0
    assert "cellvit evaluate --pred" in result.output
