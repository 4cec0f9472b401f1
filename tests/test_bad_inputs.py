"""Bad or unusual inputs to `train`, `evaluate`, model folders, reading and `segment`'s
inputs: each is refused with one line naming the file (or handled), never a traceback or a
silently wrong result (issue 14)."""

import hashlib
import json
import os

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from cellvit_cli.cli import main
from cellvit_cli.inference.inputs import Job, find_inputs, labels_layout
from cellvit_cli.io import read_image, write_labels
from cellvit_cli.modeling import ModelConfig, ModelFolderError, build_model, load_model_folder
from cellvit_cli.modeling.folder import save_model_folder
from cellvit_cli.targets import clean_labels
from cellvit_cli.training.augment import AugmentConfig
from cellvit_cli.training.data import Sample
from cellvit_cli.training.loop import Trainer, TrainConfig

TINY = ["--variant", "vit_nano_p16", "--heads", "boundary", "--epochs", "1",
        "--steps-per-epoch", "1", "--batch-size", "1", "--crop-size", "64", "--device", "cpu"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(result, *words) -> str:
    """The one 'Error: ...' line of a failed command, holding every one of `words`."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert str(word) in errors[0], errors[0]
    return errors[0]


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file()}


def _unwritable_parent(tmp_path):
    """A folder nobody may create anything in: read-only for a user; /sys for root (which
    ignores permissions, but the kernel refuses new entries there)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir(mode=0o555)
        return folder
    if not os.path.isdir("/sys"):
        pytest.skip("running as root without /sys")
    return type(tmp_path)("/sys")


@pytest.fixture
def data(tmp_path, nuclei):
    """The stardist sample as 4 images of 256 x 256 with their instance masks."""
    image, labels = nuclei
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for i, (y, x) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        tifffile.imwrite(images / f"n{i}.tif", image[y:y + 256, x:x + 256])
        tifffile.imwrite(masks / f"n{i}.tif", labels[y:y + 256, x:x + 256].astype(np.uint16))
    return images, masks


def _train(data, out, *extra):
    images, masks = data
    return _run("train", "--images", images, "--masks", masks, *TINY, "-o", out, *extra)


# ---- train -o ----

def test_train_refuses_an_out_holding_a_model_unless_overwrite(data, tmp_path):
    out = tmp_path / "model"
    save_model_folder(out, build_model("vit_nano_p16", ("star",)),
                      ModelConfig("vit_nano_p16", ("star",)))
    (out / "README.md").write_text("# old model\n")
    (out / "scores.json").write_text('{"fluo": {"star": {"ap50": 0.9, "ap75": 0.5}}}\n')
    before = _digest(out)
    _error_line(_train(data, out), out, "already holds a model", "--overwrite")
    assert _digest(out) == before
    result = _train(data, out, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (out / "scores.json").exists()
    assert "old model" not in (out / "README.md").read_text()  # the new model's card
    assert load_model_folder(out).config.heads == ("boundary",)
    _error_line(_train(data, out, "--overwrite", "--resume"), "not both")


@pytest.mark.parametrize("case", ["file", "under_file", "unwritable"])
def test_train_out_that_cannot_be_a_model_folder(data, tmp_path, case):
    (tmp_path / "notes.txt").write_text("a file")
    out = {"file": tmp_path / "notes.txt", "under_file": tmp_path / "notes.txt" / "model",
           "unwritable": _unwritable_parent(tmp_path) / "cellvit_model"}[case]
    problem = {"file": "is a file", "under_file": "under", "unwritable": "cannot create"}[case]
    _error_line(_train(data, out), out, problem)


# ---- train data ----

def test_train_refuses_masks_that_are_all_empty(data, tmp_path):
    images, masks = data
    for path in masks.iterdir():
        tifffile.imwrite(path, np.zeros((256, 256), np.uint16))
    out = tmp_path / "model"
    _error_line(_train(data, out), masks, "all 4 training mask(s) are empty")
    assert not (out / "config.json").exists()


def test_train_refuses_validation_masks_that_are_all_empty(data, tmp_path):
    val_images, val_masks = tmp_path / "val_images", tmp_path / "val_masks"
    val_images.mkdir(), val_masks.mkdir()
    tifffile.imwrite(val_images / "v.tif", tifffile.imread(data[0] / "n0.tif"))
    tifffile.imwrite(val_masks / "v.tif", np.zeros((256, 256), np.uint16))
    result = _train(data, tmp_path / "m", "--val-images", val_images, "--val-masks", val_masks)
    _error_line(result, val_masks, "validation mask(s) are empty")


def test_train_refuses_empty_validation_folders(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _train(data, tmp_path / "m", "--val-images", empty, "--val-masks", empty)
    _error_line(result, empty, "no validation images")


def test_train_says_when_the_only_image_went_to_validation(data, tmp_path):
    images, masks = data
    for i in (1, 2, 3):
        (images / f"n{i}.tif").unlink()
    result = _train(data, tmp_path / "m", "--val-fraction", "0.5")
    _error_line(result, images, "no training images left", "--val-fraction 0")


def test_train_no_images_at_all(data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run("train", "--images", empty, "--masks", data[1], *TINY, "-o", tmp_path / "m")
    _error_line(result, empty, "no training images")


def test_train_channel_mismatch_names_the_file(data, tmp_path):
    images, _ = data
    grey = tifffile.imread(images / "n2.tif")
    tifffile.imwrite(images / "n2.tif", np.stack([grey, grey.max() - grey]))
    result = _train(data, tmp_path / "m", "--in-channels", "3")
    _error_line(result, images / "n2.tif", "needs 3 channels", "has 2")


def test_train_binary_mask_names_the_file(data, tmp_path):
    _, masks = data
    binary = (tifffile.imread(masks / "n1.tif") > 0).astype(np.uint8)
    tifffile.imwrite(masks / "n1.tif", binary)
    _error_line(_train(data, tmp_path / "m"), masks / "n1.tif", "binary mask")


# ---- train --resume ----

@pytest.fixture
def sample(nuclei):
    image, labels = nuclei
    return Sample("n", (image[None, :128, :128] / image.max()).astype(np.float32),
                  clean_labels(labels[:128, :128]))


def _trainer(sample, out, heads):
    cfg = TrainConfig(variant="vit_nano_p16", heads=heads, epochs=1, steps_per_epoch=1,
                      batch_size=1, augment=AugmentConfig(crop_size=64), device="cpu")
    return Trainer([sample], [], out, cfg)


def test_resume_from_a_checkpoint_of_other_heads(sample, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    _trainer(sample, tmp_path, ("boundary",)).save_checkpoint()
    with pytest.raises(ValueError, match="made for heads boundary .this run: star.") as info:
        _trainer(sample, tmp_path, ("star",)).load_checkpoint()
    assert "checkpoint.pt" in str(info.value) and "\n" not in str(info.value)


def test_resume_from_an_old_checkpoint_that_does_not_fit(sample, tmp_path):
    """Checkpoints written before they named their model: the state_dict error, one line."""
    _trainer(sample, tmp_path, ("boundary",)).save_checkpoint()
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del payload["model_config"], payload["train_config"]
    torch.save(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt: does not fit") as info:
        _trainer(sample, tmp_path, ("star",)).load_checkpoint()
    assert "\n" not in str(info.value)


def test_resume_from_a_truncated_checkpoint(sample, tmp_path):
    _trainer(sample, tmp_path, ("boundary",)).save_checkpoint()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFolderError, match="checkpoint.pt: truncated or corrupt"):
        _trainer(sample, tmp_path, ("boundary",)).load_checkpoint()


def test_resume_cli_with_other_heads(data, tmp_path):
    out = tmp_path / "model"
    assert _train(data, out).exit_code == 0
    images, masks = data
    result = _run("train", "--images", images, "--masks", masks,
                  *[a if a != "boundary" else "star" for a in TINY], "-o", out, "--resume")
    _error_line(result, out / "checkpoint.pt", "heads boundary")


# ---- model folders ----

@pytest.fixture
def model_dir(tmp_path):
    config = ModelConfig("vit_nano_p16", ("boundary",), median_diameter=12.0)
    return save_model_folder(tmp_path / "model", build_model("vit_nano_p16", ("boundary",)),
                             config, {"boundary": {"fg_thresh": 0.5}, "default_mode": "boundary"})


def _damage(folder, case):
    """Damage `folder` as `case` says; returns the file now at fault."""
    weights, config, thresholds = (folder / n for n in
                                   ("weights.pt", "config.json", "thresholds.json"))
    if case == "weights_missing":
        weights.unlink()
    elif case == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:2000])
    elif case == "weights_empty":
        weights.write_bytes(b"")
    elif case == "weights_text":
        weights.write_text("not a checkpoint\n" * 20)
    elif case == "weights_list":
        torch.save([1, 2, 3], weights)
    elif case == "weights_of_other_heads":
        torch.save(build_model("vit_nano_p16", ("star",)).state_dict(), weights)
    elif case.startswith("config"):
        raw = json.loads(config.read_text())
        text = {"config_truncated": config.read_text()[:40], "config_list": "[1, 2]",
                "config_no_variant": json.dumps({k: v for k, v in raw.items() if k != "variant"}),
                "config_zero_diameter": json.dumps(raw | {"median_diameter": 0.0})}[case]
        config.write_text(text)
        return config
    elif case == "thresholds_truncated":
        thresholds.write_text('{"boundary": {"fg_th')
        return thresholds
    elif case == "thresholds_bad_value":
        thresholds.write_text('{"boundary": {"fg_thresh": "high"}}')
        return thresholds
    return weights


DAMAGES = {
    "weights_missing": "missing", "weights_truncated": "truncated or corrupt",
    "weights_empty": "truncated or corrupt", "weights_text": "truncated or corrupt",
    "weights_list": "not a state dict", "weights_of_other_heads": "do not fit the config",
    "config_truncated": "unreadable JSON", "config_list": "not an object",
    "config_no_variant": "missing or malformed key", "config_zero_diameter": "median_diameter",
    "thresholds_truncated": "unreadable JSON", "thresholds_bad_value": "'boundary'",
}


@pytest.mark.parametrize("case", sorted(DAMAGES))
def test_damaged_model_folder_is_one_model_folder_error(model_dir, case):
    at_fault = _damage(model_dir, case)
    with pytest.raises(ModelFolderError) as info:
        load_model_folder(model_dir)
    message = str(info.value)
    assert message.startswith(f"{at_fault}: ") and "\n" not in message
    assert DAMAGES[case] in message


@pytest.mark.parametrize("case", ["weights_truncated", "config_truncated"])
def test_segment_with_a_damaged_model_folder(model_dir, tmp_path, nuclei, case):
    at_fault = _damage(model_dir, case)
    tifffile.imwrite(tmp_path / "a.tif", nuclei[0][:96, :96])
    result = _run("segment", tmp_path / "a.tif", "-o", tmp_path / "out", "--model", model_dir)
    _error_line(result, at_fault)


def test_models_cli_with_an_unparsable_config(model_dir):
    at_fault = _damage(model_dir, "config_truncated")
    _error_line(_run("models", model_dir), at_fault, "unreadable JSON")


# ---- evaluate ----

@pytest.fixture
def scored(tmp_path, nuclei):
    """gt/img{0,1}.tif and pred/img{0,1}_labels.tif: quarters of the sample, the prediction
    shifted by a pixel."""
    labels = nuclei[1]
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    for i, x in enumerate((0, 256)):
        gt = labels[:256, x:x + 256]
        write_labels(gt_dir / f"img{i}.tif", gt)
        write_labels(pred_dir / f"img{i}_labels.tif", np.roll(gt, 1, axis=0))
    return gt_dir, pred_dir


@pytest.mark.parametrize("dtype", [np.uint8, bool])
def test_evaluate_refuses_binary_ground_truth(scored, dtype):
    gt_dir, pred_dir = scored
    binary = tifffile.imread(gt_dir / "img1.tif") > 0
    tifffile.imwrite(gt_dir / "img1.tif", binary.astype(dtype))
    result = _run("evaluate", "--pred", pred_dir, "--gt", gt_dir)
    _error_line(result, gt_dir / "img1.tif", "looks like a binary mask", "--binary-gt")


def test_evaluate_binary_gt_labels_connected_objects(scored, tmp_path):
    from scipy import ndimage as ndi

    gt_dir, pred_dir = scored
    binary = tifffile.imread(gt_dir / "img1.tif") > 0
    tifffile.imwrite(gt_dir / "img1.tif", binary.astype(np.uint8))
    n_true = len(np.unique(tifffile.imread(gt_dir / "img0.tif"))) - 1
    n_true += ndi.label(binary, np.ones((3, 3)))[1]  # 8-connected objects of the binary mask
    result = _run("evaluate", "--pred", pred_dir, "--gt", gt_dir, "--binary-gt", "-o",
                  tmp_path / "r")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["n_true"] == n_true and summary["settings"]["binary_gt"] is True


def test_evaluate_refuses_binary_predictions(scored):
    gt_dir, pred_dir = scored
    path = pred_dir / "img0_labels.tif"
    tifffile.imwrite(path, (tifffile.imread(path) > 0).astype(np.uint16))
    for extra in ([], ["--binary-gt"]):
        result = _run("evaluate", "--pred", pred_dir, "--gt", gt_dir, *extra)
        line = _error_line(result, path, "looks like a binary mask")
        assert "--binary-gt" not in line


def test_evaluate_accepts_a_single_object_labelled_one(scored):
    gt_dir, pred_dir = scored
    one = np.zeros((256, 256), np.uint16)
    one[40:60, 40:60] = 1
    write_labels(gt_dir / "img0.tif", one)
    write_labels(pred_dir / "img0_labels.tif", one)
    assert _run("evaluate", "--pred", pred_dir, "--gt", gt_dir).exit_code == 0


def test_evaluate_descending_threshold_range(scored):
    gt_dir, pred_dir = scored
    result = _run("evaluate", "--pred", pred_dir, "--gt", gt_dir, "--iou-thresholds",
                  "0.95:0.05:0.5")
    assert result.exit_code == 2
    assert "runs down" in result.output and "0.5:0.05:0.95" in result.output


@pytest.mark.parametrize("case", ["file", "under_file", "unwritable"])
def test_evaluate_output_folder_that_cannot_be_written(scored, tmp_path, case):
    gt_dir, pred_dir = scored
    (tmp_path / "notes.txt").write_text("a file")
    out = {"file": tmp_path / "notes.txt", "under_file": tmp_path / "notes.txt" / "report",
           "unwritable": _unwritable_parent(tmp_path) / "cellvit_report"}[case]
    result = _run("evaluate", "--pred", pred_dir, "--gt", gt_dir, "-o", out)
    _error_line(result, out)
    assert (tmp_path / "notes.txt").read_text() == "a file"


# ---- reading images ----

def test_rgba_alpha_is_dropped_not_averaged(tmp_path, nuclei):
    rgb = np.stack([(nuclei[0][:64, :64] // 256 + k * 10).astype(np.uint8) for k in range(3)], -1)
    alpha = np.full((64, 64, 1), 255, np.uint8)
    rgba = np.concatenate([rgb, alpha], -1)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba)  # tifffile: photometric RGB + alpha
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgba, -1, 0), photometric="rgb",
                     planarconfig="separate")
    tifffile.imwrite(tmp_path / "unspecified.tif", rgba, photometric="rgb",
                     extrasamples=["unspecified"])
    for name in ("rgba.tif", "planar.tif", "unspecified.tif"):
        image = read_image(tmp_path / name)
        np.testing.assert_array_equal(image.data, np.moveaxis(rgb, -1, 0), err_msg=name)
    grey_alpha = np.stack([rgb[..., 0], alpha[..., 0]], -1)
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, photometric="minisblack",
                     extrasamples=["unassalpha"])
    np.testing.assert_array_equal(read_image(tmp_path / "ga.tif").data, rgb[None, ..., 0])


def test_extra_channels_that_are_not_alpha_stay(tmp_path, nuclei):
    channels = np.stack([nuclei[0][:64, :64]] * 5, -1)
    tifffile.imwrite(tmp_path / "five.tif", channels, photometric="minisblack",
                     planarconfig="contig")
    assert read_image(tmp_path / "five.tif").data.shape[0] == 5


# ---- segment inputs and resume ----

def test_segment_inputs_skip_hidden_files(tmp_path, nuclei):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / ".cache").mkdir()
    image = nuclei[0][:64, :64]
    for name in ("a.tif", "sub/b.tif", ".a_labels.tmp-1a2b3c4d.tif", ".cache/c.tif"):
        tifffile.imwrite(folder / name, image)
    (folder / "._a.tif").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00")  # AppleDouble
    found = find_inputs([folder], recursive=True)
    assert sorted(str(name) for _, name in found) == ["a", "sub/b"]
    assert [str(name) for _, name in find_inputs([folder])] == ["a"]
    hidden = folder / "._a.tif"
    assert [p for p, _ in find_inputs([hidden])] == [hidden.resolve()]  # named: taken as given


def _job(tmp_path):
    return Job(tmp_path / "a.tif", {"labels": tmp_path / "a_labels.tif",
                                    "rois": tmp_path / "a_rois.zip"})


@pytest.mark.parametrize("case", ["empty", "truncated", "header_only", "not_tiff"])
def test_resume_redoes_empty_or_truncated_labels(tmp_path, nuclei, case):
    job = _job(tmp_path)
    labels = job.outputs["labels"]
    write_labels(labels, nuclei[1])
    assert job.is_done({"rois": False}) and labels_layout(labels) == "plain"
    data = labels.read_bytes()
    labels.write_bytes({"empty": b"", "truncated": data[: len(data) - 100],
                        "header_only": data[:16], "not_tiff": b"label,count\n3,4\n"}[case])
    assert not job.is_done({"rois": False})


def test_segment_rerun_redoes_a_truncated_labels_file(tmp_path, nuclei):
    torch.manual_seed(0)
    config = ModelConfig("vit_nano_p16", ("boundary",), median_diameter=12.0)
    model_dir = save_model_folder(tmp_path / "model", config.build(), config)
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", nuclei[0][:96, :96])
    out = tmp_path / "out"
    assert _run("segment", inputs, "-o", out, "--model", model_dir).exit_code == 0
    labels = out / "a_labels.tif"
    complete, data = tifffile.imread(labels), labels.read_bytes()
    labels.write_bytes(data[: len(data) // 2])
    result = _run("segment", inputs, "-o", out, "--model", model_dir)
    assert result.exit_code == 0 and "1 image(s) done, 0 skipped" in result.output
    np.testing.assert_array_equal(tifffile.imread(labels), complete)


# ---- segment: one image that cannot be read, segmented or written fails alone ----

@pytest.fixture(scope="module")
def cells_model(tmp_path_factory):
    """A ViT-nano folder whose star head sees small round cells almost everywhere (a little
    dependent on the image), without any training."""
    torch.manual_seed(0)
    config = ModelConfig("vit_nano_p16", ("star",), median_diameter=12.0)
    model = config.build()
    last = model.heads["star"].body[-1]
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.copy_(torch.tensor([2.0] + [0.6] * (last.bias.numel() - 1)))
    return save_model_folder(tmp_path_factory.mktemp("model") / "cells", model, config,
                             {"default_mode": "star"})


@pytest.fixture
def good_images(tmp_path, nuclei):
    """in/good1.tif and in/good2.tif: crops of the sample (the bad file is added per test)."""
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "good1.tif", nuclei[0][:96, :96])
    tifffile.imwrite(folder / "good2.tif", nuclei[0][200:280, 100:212])
    return folder


def _segment(model, inputs, out, *extra):
    extra = [str(a) for a in extra]
    size = [] if "--scale" in extra else ["--diameter", "12"]
    return _run("segment", inputs, "-o", out, "--model", model, *size, *extra)


def _image_error_line(result, *words) -> str:
    """The one 'error: ...' line of a run where an image failed: the others were done, the
    summary printed, exit code 1, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "segment: " in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    for word in words:
        assert str(word) in errors[0], errors[0]
    return errors[0]


def _outputs(folder, stems=None) -> dict:
    """{name: content} of the outputs of `stems` (all when None) in `folder`: file bytes, or
    {member: bytes} of a zip (zip members carry the time they were written); no run-level
    file (summary.csv, cells.csv)."""
    import zipfile

    found = {}
    for path in sorted(folder.iterdir()):
        if (path.name in ("summary.csv", "cells.csv") or path.name.startswith(".")
                or not path.is_file()):
            continue
        if stems is not None and not any(path.name.startswith(f"{stem}_")
                                         or path.name == f"{stem}.geojson" for stem in stems):
            continue
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                found[path.name] = {name: zf.read(name) for name in zf.namelist()}
        else:
            found[path.name] = path.read_bytes()
    return found


def _clean_run(model, tmp_path, folder, names, *extra) -> dict:
    """The outputs of `names` (files of `folder`) segmented alone, with the same options."""
    clean_in, clean_out = tmp_path / "clean_in", tmp_path / "clean_out"
    clean_in.mkdir()
    for name in names:
        (clean_in / name).write_bytes((folder / name).read_bytes())
    result = _segment(model, clean_in, clean_out, *extra)
    assert result.exit_code == 0, result.output
    return _outputs(clean_out)


def _no_temp_files(*folders) -> bool:
    return not [p for folder in folders for p in folder.rglob("*") if ".tmp-" in p.name]


_CLEAN_RUNS: dict[tuple, dict] = {}  # options -> outputs of the good images run alone


def _check_good_outputs(model, tmp_path, folder, out, *extra) -> None:
    """The good files of the run: complete and identical to a clean run (made once per set
    of options: the good images are the same in every test); no temp file."""
    key = (str(model), *map(str, extra))
    if key not in _CLEAN_RUNS:
        _CLEAN_RUNS[key] = _clean_run(model, tmp_path, folder, ["good1.tif", "good2.tif"], *extra)
        assert _no_temp_files(tmp_path / "clean_out")
    clean = _CLEAN_RUNS[key]
    assert {"good1_labels.tif", "good2_labels.tif"} <= set(clean)
    assert _outputs(out, ["good1", "good2"]) == clean
    assert _no_temp_files(folder, out)


BAD_PIXELS = {"nan_border": "image contains NaN or infinite pixels",
              "inf": "image contains NaN or infinite pixels",
              "complex": "unsupported pixel type complex64"}


def _bad_pixels(case: str, image: np.ndarray) -> np.ndarray:
    if case == "complex":
        return image.astype(np.complex64)
    data = image.astype(np.float32)
    if case == "nan_border":
        data[:4], data[-4:], data[:, :4], data[:, -4:] = np.nan, np.nan, np.nan, np.nan
    else:
        data[50, 60] = np.inf
    return data


@pytest.mark.parametrize("block_mode", ["on", "off"])
@pytest.mark.parametrize("case", sorted(BAD_PIXELS))
def test_segment_refuses_bad_pixels_in_block_mode_as_in_whole_images(
        cells_model, good_images, tmp_path, nuclei, case, block_mode):
    bad = good_images / "bad.tif"
    tifffile.imwrite(bad, _bad_pixels(case, nuclei[0][:128, :128]))
    out = tmp_path / "out"
    result = _segment(cells_model, good_images, out, "--block-mode", block_mode)
    line = _image_error_line(result)
    assert line == f"error: {bad}: {BAD_PIXELS[case]}"  # the same line in both modes
    assert not list(out.glob("bad*"))
    _check_good_outputs(cells_model, tmp_path, good_images, out, "--block-mode", block_mode)


def test_segment_one_pixel_images_in_block_mode(cells_model, good_images, tmp_path, nuclei):
    tifffile.imwrite(good_images / "dot.tif", nuclei[0][:1, :1])
    tifffile.imwrite(good_images / "row.tif", nuclei[0][:1, :40])
    out = tmp_path / "out"
    result = _segment(cells_model, good_images, out, "--block-mode", "on")
    assert result.exit_code == 0 and "4 image(s) done" in result.output, result.output
    assert tifffile.imread(out / "dot_labels.tif").shape == (1, 1)
    assert tifffile.imread(out / "row_labels.tif").shape == (1, 40)
    _check_good_outputs(cells_model, tmp_path, good_images, out, "--block-mode", "on")


@pytest.mark.parametrize("block_mode", ["on", "off"])
def test_segment_zoom_to_nothing_fails_that_image_only(cells_model, good_images, tmp_path,
                                                       nuclei, monkeypatch, block_mode):
    """Zooms are clamped so an image keeps some pixels; without the clamp (patched away) an
    image that the zoom shrinks to nothing fails alone, naming the file and the options."""
    from cellvit_cli.inference import segmenter

    monkeypatch.setattr(segmenter, "clamp_zoom", lambda zoom, shape: zoom)
    tifffile.imwrite(good_images / "small.tif", nuclei[0][:8, :8])
    out = tmp_path / "out"
    args = ("--scale", "0.05", "--block-mode", block_mode)
    result = _segment(cells_model, good_images, out, *args)
    _image_error_line(result, good_images / "small.tif", "zoom 0.05 shrinks the image (8 x 8 px)",
                      "--diameter", "--scale")
    _check_good_outputs(cells_model, tmp_path, good_images, out, *args)


@pytest.mark.parametrize("block_mode", ["on", "off"])
def test_segment_value_error_while_decoding_fails_that_image_only(
        cells_model, good_images, tmp_path, nuclei, monkeypatch, block_mode):
    from cellvit_cli.inference.segmenter import Segmenter

    decode = Segmenter.decode

    def fragile_decode(self, maps, shape):
        if tuple(shape) == (72, 88):
            raise ValueError("maps the decoder cannot use")
        return decode(self, maps, shape)

    monkeypatch.setattr(Segmenter, "decode", fragile_decode)
    tifffile.imwrite(good_images / "odd.tif", nuclei[0][:72, :88])
    out = tmp_path / "out"
    result = _segment(cells_model, good_images, out, "--block-mode", block_mode)
    _image_error_line(result, good_images / "odd.tif", "cannot segment the image",
                      "maps the decoder cannot use")
    assert not list(out.glob("odd*"))
    _check_good_outputs(cells_model, tmp_path, good_images, out, "--block-mode", block_mode)


@pytest.mark.parametrize("block_mode", ["on", "off"])
def test_segment_failed_write_leaves_no_partial_outputs(cells_model, good_images, tmp_path,
                                                        nuclei, block_mode):
    """The labels (written last) of one image cannot be written: the exports of that image
    written before them are removed, the other images are done."""
    tifffile.imwrite(good_images / "stuck.tif", nuclei[0][300:380, 300:380])
    out = tmp_path / "out"
    (out / "stuck_labels.tif").mkdir(parents=True)  # in the way of the labels
    exports = ("--roi", "--geojson", "--measure", "--save-maps", "--block-mode", block_mode)
    result = _segment(cells_model, good_images, out, *exports)
    _image_error_line(result, f"error: {out / 'stuck_labels.tif'}: cannot write the outputs "
                              "of stuck.tif: Is a directory")
    assert [p.name for p in out.glob("stuck*")] == ["stuck_labels.tif"]  # the folder only
    _check_good_outputs(cells_model, tmp_path, good_images, out, *exports)


@pytest.mark.parametrize("case", ["file", "under_file", "unwritable"])
def test_segment_output_folder_that_cannot_be_made(cells_model, good_images, tmp_path, case):
    (tmp_path / "notes.txt").write_text("a file")
    out = {"file": tmp_path / "notes.txt", "under_file": tmp_path / "notes.txt" / "out",
           "unwritable": _unwritable_parent(tmp_path) / "cellvit_out"}[case]
    problem = {"file": "is a file", "under_file": "lies under",
               "unwritable": "cannot create the folder"}[case]
    _error_line(_segment(cells_model, good_images, out), out, problem)
    assert (tmp_path / "notes.txt").read_text() == "a file"


def test_segment_removes_temp_files_a_killed_run_left(cells_model, good_images, tmp_path):
    """An in-place run (output folder = input folder) after a kill: the hidden temp files
    of its outputs are neither read as inputs nor left behind; other hidden files stay."""
    stale = [".good1_labels.tmp-0123abcd.tif", ".good1_labels.tmp-89abcdef.tif.uint32.tif",
             ".good1.tmp-00ff00ff.geojson", ".good2_maps_star.tmp-12345678.tif"]
    for name in stale:
        (good_images / name).write_bytes(b"II*\x00half written")
    (good_images / ".notes.tmp-12345678.txt").write_text("not ours")
    exports = ("--geojson", "--save-maps")
    clean = _clean_run(cells_model, tmp_path, good_images, ["good1.tif", "good2.tif"], *exports)
    result = _segment(cells_model, good_images, good_images, *exports)
    assert result.exit_code == 0 and "2 image(s) done, 0 skipped, 0 failed" in result.output
    assert _outputs(good_images, ["good1", "good2"]) == clean
    hidden = sorted(p.name for p in good_images.glob(".*"))
    assert hidden == [".notes.tmp-12345678.txt"]


@pytest.mark.slow
def test_segment_killed_mid_run_then_rerun_equals_a_clean_run(cells_model, tmp_path, nuclei):
    """kill -9 once the first labels file is there and another image's outputs are being
    written (a temp file is there); the rerun finishes the rest and removes the temp files:
    outputs identical to a clean run."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        tifffile.imwrite(folder / f"img{i}.tif", np.roll(nuclei[0], 37 * i, axis=1))
    out, clean = tmp_path / "out", tmp_path / "clean"

    def command(target):
        return [sys.executable, "-c", "from cellvit_cli.cli import main; main()", "segment",
                str(folder), "-o", str(target), "--model", str(cells_model), "--diameter", "12",
                "--roi", "--geojson"]

    killed = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while killed.poll() is None and time.monotonic() < deadline and not (
            list(out.glob("*_labels.tif")) and list(out.glob(".*.tmp-*"))):
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    n_done = len(list(out.glob("*_labels.tif")))
    assert 1 <= n_done < 6 and list(out.glob(".*.tmp-*")), "the kill must land mid-write"
    rerun = subprocess.run(command(out), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - n_done} image(s) done, {n_done} skipped, 0 failed" in rerun.stdout
    assert subprocess.run(command(clean), capture_output=True, timeout=600).returncode == 0
    outputs = _outputs(out)
    assert len(outputs) == 6 * 3 and outputs == _outputs(clean)  # labels, rois, geojson
    assert _no_temp_files(out, folder)
