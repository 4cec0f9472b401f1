"""Issue 15: the habits of Cellpose and StarDist users, through the CLI on the stardist sample.

Pairing shared by `train` and `evaluate` (`cellvit_cli.pairing`), evaluate's naming and its
PNG / `_seg.npy` labels, and the feedback of `train` and `cellvit models`.
"""

import json
import re

import imagecodecs
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image as PILImage

from cellvit_cli import metrics
from cellvit_cli.cli import main
from cellvit_cli.io import InputError, read_labels, write_labels
from cellvit_cli.pairing import PairingError
from cellvit_cli.targets import clean_labels
from cellvit_cli.training.data import load_samples, pair_files
from cellvit_cli.training.finish import TrainReport, report_lines, training_warnings

TINY = ["--variant", "vit_nano_p16", "--heads", "boundary", "--epochs", "2",
        "--steps-per-epoch", "1", "--batch-size", "1", "--crop-size", "64", "--device", "cpu"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(result) -> str:
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def quarters(array):
    return [array[y:y + 256, x:x + 256] for y in (0, 256) for x in (0, 256)]


def save_seg_npy(image_path, image, labels):
    """`image_path` minus extension + `_seg.npy`, written by Cellpose's own writer."""
    from cellpose.io import masks_flows_to_seg

    y, x = labels.shape
    flows = [np.zeros((y, x, 3), np.uint8), np.zeros((2, y, x), np.float32),
             np.zeros((y, x), np.float32)]
    masks_flows_to_seg(image, labels, flows, str(image_path), diams=np.float32(17.0))


def shifted(labels, seed):
    """A plausible prediction: objects shifted by up to 2 px."""
    return np.roll(labels, tuple(np.random.default_rng(seed).integers(-2, 3, size=2)), (0, 1))


@pytest.fixture
def cellpose_folder(tmp_path, nuclei):
    """Cellpose's training layout: n{i}.tif with n{i}_masks.tif in one folder, plus what
    running Cellpose leaves beside them (n{i}_cp_masks.png, n{i}_flows.tif)."""
    folder = tmp_path / "cellpose"
    folder.mkdir()
    for i, (image, labels) in enumerate(zip(quarters(nuclei[0]), quarters(nuclei[1]))):
        tifffile.imwrite(folder / f"n{i}.tif", image)
        tifffile.imwrite(folder / f"n{i}_masks.tif", labels.astype(np.uint16))
        (folder / f"n{i}_cp_masks.png").write_bytes(imagecodecs.png_encode(
            shifted(labels, i).astype(np.uint16)))
        tifffile.imwrite(folder / f"n{i}_flows.tif", np.zeros((3, 16, 16), np.uint8),
                         photometric="minisblack")
    return folder


# ---- pairing: train ---------------------------------------------------------------------

def test_cellpose_layout_pairs_each_image_with_its_mask(cellpose_folder):
    pairs = pair_files(cellpose_folder, cellpose_folder)
    assert [(i.name, m.name) for i, m in pairs] == [(f"n{i}.tif", f"n{i}_masks.tif")
                                                    for i in range(4)]


def test_an_image_is_never_its_own_mask(tmp_path, nuclei):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(quarters(nuclei[0])):
        tifffile.imwrite(folder / f"n{i}.tif", image)
    result = _run("train", "--images", folder, "--masks", folder, *TINY, "-o", tmp_path / "m")
    line = _error_line(result)
    assert result.exit_code == 1 and "no mask for image(s) n0.tif" in line
    assert "never its own mask" in line and "_masks" in line and "--mask-suffix" in line


def test_ambiguous_masks_are_an_error_listing_them(tmp_path, cellpose_folder):
    for i in range(4):
        (cellpose_folder / f"n{i}_masks.tif").rename(cellpose_folder / f"n{i}_labels.tif")
    (cellpose_folder / "n0_masks.tif").write_bytes((cellpose_folder / "n0_labels.tif").read_bytes())
    result = _run("train", "--images", cellpose_folder, "--masks", cellpose_folder, *TINY,
                  "-o", tmp_path / "m")
    line = _error_line(result)
    assert "ambiguous mask for n0: n0_masks.tif, n0_labels.tif" in line
    assert "--mask-suffix" in line and not (tmp_path / "m").exists()
    pairs = pair_files(cellpose_folder, cellpose_folder, mask_suffix="_labels")
    assert [m.name for _, m in pairs] == [f"n{i}_labels.tif" for i in range(4)]


def test_mixed_namings_are_an_error(tmp_path, cellpose_folder):
    (cellpose_folder / "n1_masks.tif").rename(cellpose_folder / "n1_labels.tif")
    with pytest.raises(PairingError, match="two namings pair 1 file"):
        pair_files(cellpose_folder, cellpose_folder, ids=["n0", "n1"])


def test_seg_npy_masks_train(tmp_path, nuclei):
    folder = tmp_path / "gui"
    folder.mkdir()
    for i, (image, labels) in enumerate(zip(quarters(nuclei[0]), quarters(nuclei[1]))):
        tifffile.imwrite(folder / f"n{i}.tif", image)
        save_seg_npy(folder / f"n{i}.tif", image, labels)
    pairs = pair_files(folder, folder)
    assert [m.name for _, m in pairs] == [f"n{i}_seg.npy" for i in range(4)]
    samples = load_samples(pairs, 1, ("boundary",), progress=False)
    for sample, labels in zip(samples, quarters(nuclei[1])):
        assert np.array_equal(sample.labels, clean_labels(labels))


def test_png_images_and_masks_train(tmp_path, nuclei):
    """Cellpose and the DSB data keep images and masks as PNG: RGB(A) 8-bit images, 16-bit
    masks."""
    folder = tmp_path / "png"
    folder.mkdir()
    for i, (image, labels) in enumerate(zip(quarters(nuclei[0]), quarters(nuclei[1]))):
        grey = (image / image.max() * 255).astype(np.uint8)
        rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
        (folder / f"n{i}.png").write_bytes(imagecodecs.png_encode(rgba))
        (folder / f"n{i}_masks.png").write_bytes(imagecodecs.png_encode(labels.astype(np.uint16)))
    pairs = pair_files(folder, folder)
    assert [(i.name, m.name) for i, m in pairs] == [(f"n{i}.png", f"n{i}_masks.png")
                                                    for i in range(4)]
    samples = load_samples(pairs, 1, ("boundary",), progress=False)
    for sample, labels in zip(samples, quarters(nuclei[1])):
        assert sample.image.shape == (1, 256, 256)
        assert np.array_equal(sample.labels, clean_labels(labels))


def test_seg_npy_that_asks_for_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran code from the file",))

    path = tmp_path / "x_seg.npy"
    np.save(path, np.array({"masks": Payload()}, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="refused to load builtins.print"):
        read_labels(path)


def test_no_pairs_in_two_folders_shows_what_was_seen(tmp_path, cellpose_folder):
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(4):
        (cellpose_folder / f"n{i}_masks.tif").rename(masks / f"n{i}_gt.tif")
    result = _run("train", "--images", cellpose_folder, "--masks", masks, *TINY,
                  "-o", tmp_path / "m")
    line = _error_line(result)
    assert "seen in" in line and "n0_gt.tif" in line and "--mask-suffix" in line
    assert len(pair_files(cellpose_folder, masks, mask_suffix="_gt")) == 4


# ---- train: feedback --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, nuclei):
    """One short run on Cellpose's one-folder layout, with validation: (result, model folder,
    data folder)."""
    folder = tmp_path_factory.mktemp("habits") / "data"
    folder.mkdir()
    for i, (image, labels) in enumerate(zip(quarters(nuclei[0]), quarters(nuclei[1]))):
        tifffile.imwrite(folder / f"n{i}.tif", image)
        tifffile.imwrite(folder / f"n{i}_masks.tif", labels.astype(np.uint16))
    out = folder.parent / "model"
    result = _run("train", "--images", folder, "--masks", folder, "--val-fraction", "0.25",
                  *TINY, "-o", out)
    assert result.exit_code == 0, result.output
    return result, out, folder


def test_train_on_the_cellpose_layout_uses_the_masks(trained):
    _, out, folder = trained
    pairs = json.loads((out / "train_config.json").read_text())["pairs"]
    used = sorted(tuple(p) for p in pairs["train"] + pairs["validation"])
    assert used == [(str(folder / f"n{i}.tif"), str(folder / f"n{i}_masks.tif"))
                    for i in range(4)]


def test_train_says_each_validation_with_ap_per_mode_and_best(trained):
    result, *_ = trained
    lines = re.findall(r"epoch (\d)/2: loss [\d.]+, AP@0\.5 boundary ([\d.]+) "
                       r"\(mean [\d.]+; (new best|best [\d.]+ at epoch 1)\)", result.output)
    assert [line[0] for line in lines] == ["1", "2"]
    assert lines[0][2] == "new best"
    assert "tuning thresholds on 1 validation image(s)" in result.output


def test_train_closes_with_a_summary_and_warnings(trained):
    result, out, _ = trained
    summary = json.loads((out / "train_summary.json").read_text())
    assert f"best epoch {summary['best_epoch']}: validation AP@0.5 boundary" in result.output
    assert "tuned thresholds: AP@0.5 boundary" in result.output
    assert f"model written to {out}; use it with: cellvit segment IMAGES --model {out}" \
        in result.output
    assert "warning: training ended after 2 step(s), inside the learning-rate warm-up of " \
           "200 steps" in result.output
    aps = list(summary["best_scores"].values()) + [s["ap50"] for s in summary["tuned"].values()]
    assert ("warning: validation AP@0.5 is 0 in every mode" in result.output) == (max(aps) == 0)


def test_training_warnings():
    done = TrainReport("m", epochs=50, steps=5000, seconds=60.0, best_epoch=40,
                       best_scores={"star": 0.7}, tuned={"star": {"ap50": 0.75}})
    assert training_warnings(done, 200, 5e-6, 5e-4) == []
    short = TrainReport("m", epochs=2, steps=4, seconds=1.0, best_epoch=1,
                        best_scores={"star": 0.0, "flow": 0.0}, tuned={"star": {"ap50": 0.0}})
    warm_up, zero = training_warnings(short, 200, 2.5e-6, 5e-4)
    assert "4 step(s), inside the learning-rate warm-up of 200 steps" in warm_up
    assert "2.5e-06" in warm_up and "AP@0.5 is 0 in every mode" in zero


def test_summary_without_validation_says_what_was_kept():
    report = TrainReport("runs/m", epochs=3, steps=30, seconds=9.0, best_epoch=2)
    lines = report_lines(report)
    assert lines[0] == "trained 3 epoch(s), 30 steps, in 9.0 s"
    assert "no validation data: kept the model of epoch 2 (lowest training loss)" in lines[1]
    assert lines[-1].startswith("model written to runs/m")


def test_models_shows_the_scores_training_tuned(trained):
    _, out, _ = trained
    assert not (out / "scores.json").exists()
    result = _run("models", out)
    assert result.exit_code == 0, result.output
    assert "validation (tuned): AP@0.5" in result.output
    assert "no recorded scores" not in result.output
    assert "warning: training ended after 2 step(s)" in result.output
    listed = json.loads(_run("models", out, "--json").output)[0]
    tuned = json.loads((out / "thresholds.json").read_text())["scores"]
    assert listed["scores"] == {"validation (tuned)": tuned}


def test_models_takes_a_shipped_name():
    result = _run("models", "nuclei_fluo_tiny")
    assert result.exit_code == 0 and "fluo_val: AP@0.5" in result.output
    result = _run("models", "no_such_model")
    assert result.exit_code == 1 and "no model folder or shipped model" in result.output


# ---- evaluate: naming and formats -------------------------------------------------------

@pytest.fixture
def gt_folder(tmp_path, nuclei):
    gt = tmp_path / "gt"
    gt.mkdir()
    for i, labels in enumerate(quarters(nuclei[1])):
        write_labels(gt / f"n{i}.tif", labels)
    return gt


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_evaluate_pairs_identical_names(tmp_path, nuclei, gt_folder):
    pred = tmp_path / "pred"
    pred.mkdir()
    preds = [shifted(labels, i) for i, labels in enumerate(quarters(nuclei[1]))]
    for i, labels in enumerate(preds):
        write_labels(pred / f"n{i}.tif", labels)
    result = _run("evaluate", "--pred", pred, "--gt", gt_folder, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    summary = _summary(tmp_path / "r")
    assert summary["n_images"] == 4
    settings = summary["settings"]
    assert (settings["pred_suffix_used"], settings["gt_suffix_used"]) == ("", "")
    expected = metrics.average_precision(quarters(nuclei[1]), preds, 0.5)
    assert summary["headline"]["ap_50"] == pytest.approx(expected)


def test_evaluate_finds_cellpose_predictions(tmp_path, nuclei, cellpose_folder, gt_folder):
    """Cellpose writes img_cp_masks.png (and img_seg.npy) beside the images: --pred on that
    folder takes the _cp_masks PNGs, not the images nor the training masks."""
    for i, (image, labels) in enumerate(zip(quarters(nuclei[0]), quarters(nuclei[1]))):
        save_seg_npy(cellpose_folder / f"n{i}.tif", image, shifted(labels, i))
    result = _run("evaluate", "--pred", cellpose_folder, "--gt", gt_folder, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    summary = _summary(tmp_path / "r")
    assert summary["settings"]["pred_suffix_used"] == "_cp_masks"
    preds = [shifted(labels, i) for i, labels in enumerate(quarters(nuclei[1]))]
    expected = metrics.average_precision(quarters(nuclei[1]), preds, 0.5)
    assert summary["headline"]["ap_50"] == pytest.approx(expected) and expected < 1
    result = _run("evaluate", "--pred", cellpose_folder, "--gt", gt_folder, "--pred-suffix",
                  "_seg.npy", "-o", tmp_path / "s")
    assert result.exit_code == 0, result.output
    assert _summary(tmp_path / "s")["headline"]["ap_50"] == pytest.approx(expected)


def test_evaluate_reads_png_ground_truth(tmp_path, nuclei):
    """16-bit grey PNG masks, and a palette PNG whose indices are the labels."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i, labels in enumerate(quarters(nuclei[1])):
        write_labels(pred / f"n{i}_labels.tif", labels)
        if i == 0:
            palette = PILImage.fromarray(labels.astype(np.uint8), mode="P")
            palette.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
            palette.save(gt / f"n{i}_masks.png")
        else:
            (gt / f"n{i}_masks.png").write_bytes(imagecodecs.png_encode(labels.astype(np.uint16)))
    result = _run("evaluate", "--pred", pred, "--gt", gt, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    summary = _summary(tmp_path / "r")
    assert summary["n_images"] == 4 and summary["headline"]["ap_50"] == 1.0
    assert summary["settings"]["gt_suffix_used"] == "_masks"


def test_evaluate_refuses_jpeg_labels(tmp_path, nuclei, gt_folder):
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, labels in enumerate(quarters(nuclei[1])):
        PILImage.fromarray(labels.astype(np.uint8)).save(pred / f"n{i}_labels.jpg")
    result = _run("evaluate", "--pred", pred, "--gt", gt_folder)
    assert result.exit_code == 1 and "JPEG is lossy" in _error_line(result)


def test_evaluate_no_pairs_shows_names_and_the_flag(tmp_path, nuclei):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    for i, labels in enumerate(quarters(nuclei[1])):
        write_labels(gt / f"n{i}_gt.tif", labels)
        write_labels(pred / f"n{i}_pred.tif", labels)
    result = _run("evaluate", "--pred", pred, "--gt", gt)
    line = _error_line(result)
    assert result.exit_code == 2 and "no pairs" in line
    assert "n0_pred.tif" in line and "n0_gt.tif" in line and "(+1 more)" in line
    assert "--pred-suffix '_pred' --gt-suffix '_gt' would pair 4 file(s)" in line
    result = _run("evaluate", "--pred", pred, "--gt", gt, "--pred-suffix", "_pred",
                  "--gt-suffix", "_gt")
    assert result.exit_code == 0 and "4 images" in result.output


def test_evaluate_given_suffix_on_identical_names_suggests_none(tmp_path, gt_folder):
    pred = tmp_path / "pred"
    pred.mkdir()
    for path in gt_folder.iterdir():
        (pred / path.name).write_bytes(path.read_bytes())
    result = _run("evaluate", "--pred", pred, "--gt", gt_folder, "--pred-suffix", "_labels")
    line = _error_line(result)
    assert result.exit_code == 2 and "--pred-suffix '' --gt-suffix ''" in line


def test_evaluate_ambiguous_predictions_list_them(tmp_path, nuclei, cellpose_folder, gt_folder):
    for i, labels in enumerate(quarters(nuclei[1])):
        write_labels(cellpose_folder / f"n{i}_labels.tif", labels)
    result = _run("evaluate", "--pred", cellpose_folder, "--gt", gt_folder)
    line = _error_line(result)
    assert result.exit_code == 2 and "ambiguous names" in line
    assert "n0_labels.tif with n0.tif" in line and "n0_cp_masks.png with n0.tif" in line
    assert "--pred-suffix" in line and "--gt-suffix" not in line
    result = _run("evaluate", "--pred", cellpose_folder, "--gt", gt_folder, "--pred-suffix",
                  "_labels")
    assert result.exit_code == 0 and "4 images" in result.output
