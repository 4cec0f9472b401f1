"""`cellvit models`: the shipped models with their recorded scores, one folder or name in
detail (text and --json), and a one-line error for what is not a model."""

import json

import pytest
from click.testing import CliRunner

from cellvit_cli.cli import main
from cellvit_cli.modeling.folder import DEFAULT_MODEL, available_models
from conftest import save_packed_cells_model


def _models(*args):
    return CliRunner().invoke(main, ["models", *map(str, args)])


def _score_text(scores: dict, mode: str) -> str:
    """What `cellvit models` prints for `scores` ({data set: {mode: {...}}}) of `mode`."""
    return "; ".join(f"{data}: AP@0.5 {by_mode[mode]['ap50']:.3f}, "
                     f"AP@0.75 {by_mode[mode]['ap75']:.3f}" for data, by_mode in scores.items())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A model folder (star and boundary heads, default mode star) with a scores.json."""
    folder = save_packed_cells_model(tmp_path_factory.mktemp("models") / "packed")
    scores = {"my_test": {"star": {"ap50": 0.51234, "ap75": 0.25},
                          "boundary": {"ap50": 0.9, "ap75": 0.8}}}
    (folder / "scores.json").write_text(json.dumps(scores))
    return folder


def test_lists_every_shipped_model_with_its_recorded_scores():
    shipped = available_models()
    assert DEFAULT_MODEL in shipped
    result = _models()
    assert result.exit_code == 0, result.output
    for name, path in shipped.items():
        config = json.loads((path / "config.json").read_text())
        mode = json.loads((path / "thresholds.json").read_text())["default_mode"]
        scores = json.loads((path / "scores.json").read_text())
        mark = " (default)" if name == DEFAULT_MODEL else ""
        assert (f"{name}{mark}: {config['variant']}, heads {','.join(config['heads'])}, "
                f"mode {mode}, median diameter {config['median_diameter']} px\n"
                f"    {_score_text(scores, mode)}\n") in result.output


def test_json_lists_what_the_shipped_folders_hold():
    listed = json.loads(_models("--json").output)
    assert [s["name"] for s in listed] == list(available_models())
    default = next(s for s in listed if s["name"] == DEFAULT_MODEL)
    path = available_models()[DEFAULT_MODEL]
    assert default["scores"] == json.loads((path / "scores.json").read_text())
    assert default["heads"] == json.loads((path / "config.json").read_text())["heads"]
    assert default["path"] == str(path)


def test_a_folder_shows_its_config_default_mode_and_scores(folder):
    result = _models(folder)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "packed: vit_tiny_p16, heads star,boundary, mode star, median diameter 12.0 px",
        "    my_test: AP@0.5 0.512, AP@0.75 0.250"]
    summary, = json.loads(_models(folder, "--json").output)
    assert summary == {"name": "packed", "path": str(folder), "variant": "vit_tiny_p16",
                       "heads": ["star", "boundary"], "default_mode": "star",
                       "median_diameter": 12.0,
                       "scores": json.loads((folder / "scores.json").read_text()),
                       "warnings": []}


def test_a_shipped_name_given_is_not_marked_default():
    result = _models(DEFAULT_MODEL)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{DEFAULT_MODEL}: ")


def _config_only(folder, dest):
    """A model folder at `dest` holding only `folder`'s config.json."""
    dest.mkdir()
    (dest / "config.json").write_text((folder / "config.json").read_text())
    return dest


def test_scores_fall_back_to_the_tuned_ones_then_to_none(tmp_path, folder):
    other = _config_only(folder, tmp_path / "copy")
    tuned = {"star": {"ap50": 0.4, "ap75": 0.1}}
    (other / "thresholds.json").write_text(json.dumps({"default_mode": "star", "scores": tuned}))
    assert "    validation (tuned): AP@0.5 0.400, AP@0.75 0.100" in _models(other).output
    (other / "thresholds.json").unlink()  # no scores, no default mode
    lines = _models(other).output.splitlines()
    assert "mode auto" in lines[0] and lines[1] == "    no recorded scores"


def test_training_warnings_are_shown(tmp_path, folder):
    other = _config_only(folder, tmp_path / "warned")
    (other / "train_summary.json").write_text(json.dumps({"warnings": ["barely trained"]}))
    assert _models(other).output.splitlines()[-1] == "    warning: barely trained"


def _one_line_error(result) -> str:
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    return result.output


def test_an_unknown_name_is_a_one_line_error_naming_the_shipped_ones(folder):
    output = _one_line_error(_models(folder, "no_such_model"))  # nothing listed before it
    assert output.startswith("Error: no_such_model: no model folder or shipped model")
    assert f"(shipped: {', '.join(available_models())})" in output


def test_a_folder_without_config_is_a_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "empty").mkdir()
    output = _one_line_error(_models(tmp_path / "empty"))
    assert f"{tmp_path / 'empty' / 'config.json'}: missing" in output
