"""`cellvit segment` as Cellpose/StarDist users run it: reruns with other settings, globs
over wells, exit codes, usage errors before the heavy imports (issue 15, points 1, 8, 10)."""


import pytest
import tifffile
from click.testing import CliRunner

from cellvit_cli.cli import main
from cellvit_cli.inference.fingerprint import changed_settings, settings_fingerprint
from cellvit_cli.inference.inputs import find_inputs
from cellvit_cli.inference.segmenter import SegmentSettings
from cellvit_cli.io import read_label_metadata, read_labels, write_labels
from cellvit_cli.samples import load_nuclei_sample
from conftest import exit_code_and_heavy_imports, save_packed_cells_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A ViT-tiny folder that sees packed round cells everywhere (see conftest)."""
    return save_packed_cells_model(tmp_path_factory.mktemp("model") / "tiny", heads=("star",))


@pytest.fixture(scope="module")
def crop():
    return load_nuclei_sample()[0][:64, :64]


@pytest.fixture
def one_image(tmp_path, crop):
    tifffile.imwrite(tmp_path / "a.tif", crop)
    return tmp_path / "a.tif"


def _run(*args):
    return CliRunner().invoke(main, ["segment", *map(str, args), "--tile-size", "64",
                                     "--overlap", "16"], catch_exceptions=False)


def test_rerun_with_another_diameter_redoes_same_settings_skip(one_image, tmp_path, model_dir):
    out = tmp_path / "out"
    assert _run(one_image, "-o", out, "--model", model_dir, "--diameter", "12").exit_code == 0
    assert read_label_metadata(out / "a_labels.tif")["settings"]["diameter"] == 12.0
    result = _run(one_image, "-o", out, "--model", model_dir, "--diameter", "12")
    assert "0 image(s) done, 1 skipped" in result.output and "redoing" not in result.output
    result = _run(one_image, "-o", out, "--model", model_dir, "--diameter", "24")
    assert result.exit_code == 0, result.output
    assert "a.tif: settings changed (diameter): redoing" in result.output
    assert "1 image(s) done, 0 skipped" in result.output
    assert read_label_metadata(out / "a_labels.tif")["settings"]["diameter"] == 24.0


def test_changed_model_files_redo_and_old_labels_count_as_done(one_image, tmp_path, model_dir):
    out = tmp_path / "out"
    _run(one_image, "-o", out, "--model", model_dir, "--diameter", "12")
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in model_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    result = _run(one_image, "-o", out, "--model", copy, "--diameter", "12")
    assert "settings changed (model_folder" in result.output and "1 image(s) done" in result.output
    # labels of a version that stored no fingerprint are done, whatever the settings
    write_labels(out / "a_labels.tif", read_labels(out / "a_labels.tif"),
                 metadata={"model": "tiny"})
    result = _run(one_image, "-o", out, "--model", model_dir, "--diameter", "30")
    assert "0 image(s) done, 1 skipped" in result.output


def test_bad_model_on_a_finished_folder_is_an_error_before_the_skip(one_image, tmp_path,
                                                                   model_dir):
    out = tmp_path / "out"
    _run(one_image, "-o", out, "--model", model_dir, "--diameter", "12")
    result = _run(one_image, "-o", out, "--model", "nonexistent_model", "--diameter", "12")
    assert result.exit_code == 2
    assert "nonexistent_model: no model folder or shipped model" in result.output
    assert "skipped" not in result.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    result = _run(one_image, "-o", out, "--model", broken, "--diameter", "12")
    assert result.exit_code == 1 and "unreadable JSON" in result.output
    assert "skipped" not in result.output


def test_fingerprint_holds_what_decides_the_labels(model_dir):
    base = settings_fingerprint(SegmentSettings(diameter=12), model_dir)
    assert {"model_folder", "model_digest", "mode", "diameter", "scale", "channel",
            "tile_size", "overlap", "block_mode"} <= set(base)
    same = settings_fingerprint(SegmentSettings(diameter=12, roi=True, batch_size=4,
                                                device="cpu", workers=1), model_dir)
    assert changed_settings(base, same) == []  # exports, batching, device: same labels
    other = settings_fingerprint(SegmentSettings(diameter=12, channel=1, overlap=32), model_dir)
    assert changed_settings(base, other) == ["channel", "overlap"]
    # a setting missing from labels written before it existed counts as its default
    older = {k: v for k, v in base.items() if k != "overlap"}
    assert changed_settings(older, base) == []
    assert changed_settings(older, other) == ["channel", "overlap"]


@pytest.fixture
def wells(tmp_path, crop):
    """plates/w1/img.tif and plates/w2/img.tif: two wells, one file name."""
    for well in ("w1", "w2"):
        (tmp_path / "plates" / well).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "plates" / well / "img.tif", crop)
    return tmp_path / "plates"


def test_double_star_glob_mirrors_wells_without_recursive(wells, tmp_path, model_dir):
    names = sorted(str(name) for _, name in find_inputs([f"{wells}/**/*.tif"]))
    assert names == ["w1/img", "w2/img"]
    assert sorted(str(n) for _, n in find_inputs([f"{wells}/*/img.tif"])) == names
    assert sorted(str(n) for _, n in find_inputs([wells], recursive=True)) == names
    out = tmp_path / "out"
    result = _run(f"{wells}/**/*.tif", "-o", out, "--model", model_dir, "--diameter", "12")
    assert result.exit_code == 0 and "2 image(s) done" in result.output, result.output
    assert (out / "w1" / "img_labels.tif").is_file() and (out / "w2" / "img_labels.tif").is_file()


def test_only_true_collisions_are_errors(wells, tmp_path, model_dir):
    # the same file through a folder and a glob is taken once
    assert len(find_inputs([wells / "w1", f"{wells}/w1/*.tif"])) == 1
    result = _run(f"{wells}/w1/*.tif", wells / "w2" / "img.tif", "-o", tmp_path / "out",
                  "--model", model_dir, "--diameter", "12")
    assert result.exit_code == 2 and "would write the same outputs" in result.output


@pytest.mark.parametrize("given,message", [("missing.tif", "missing.tif: no such file"),
                                           ("none/*.tif", "none/*.tif: no files match")])
def test_missing_path_and_empty_glob_are_usage_errors(tmp_path, model_dir, given, message,
                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(given, "-o", tmp_path / "out", "--model", model_dir)
    assert result.exit_code == 2 and message in result.output


def test_usage_errors_come_before_the_heavy_imports():
    assert exit_code_and_heavy_imports(['segment', '--diameter', 'abc', 'x', '-o', 'y'], {'torch', 'scipy', 'cellpose', 'stardist'}) == ["2"]


def test_percentiles_given_by_hand_equal_to_the_models_do_not_redo(one_image, tmp_path, model_dir):
    out = tmp_path / "out"
    _run(one_image, "-o", out, "--model", model_dir, "--diameter", "12")
    stored = read_label_metadata(out / "a_labels.tif")["settings"]["norm_percentiles"]
    assert stored == [1.0, 99.8]  # the model's, recorded as such
    result = _run(one_image, "-o", out, "--model", model_dir, "--diameter", "12",
                  "--norm-percentiles", "1", "99.8")
    assert "0 image(s) done, 1 skipped" in result.output
    result = _run(one_image, "-o", out, "--model", model_dir, "--diameter", "12",
                  "--norm-percentiles", "2", "99")
    assert "settings changed (norm_percentiles): redoing" in result.output
