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
