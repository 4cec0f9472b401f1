import subprocess
import sys
from dataclasses import fields

import click
import pytest
from click.testing import CliRunner

from cellvit_cli import __version__
from cellvit_cli.cli import main
from cellvit_cli.registry import HEADS
from cellvit_cli.settings import (AUGMENTATIONS, AugmentConfig, SegmentSettings, TrainConfig,
                                  TrainRequest, default_of)
from conftest import exit_code_and_heavy_imports


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "evaluate" in result.output
    assert "Example" in result.output


def test_python_m_help():
    result = subprocess.run([sys.executable, "-m", "cellvit_cli", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout


def _option_defaults(command) -> dict:
    return {p.name: p.default for p in command.params if isinstance(p, click.Option)}


def test_segment_options_are_segment_settings_with_their_defaults():
    """Every option of `segment` but -o and --cluster is a SegmentSettings field, with the
    field's default (options defined once)."""
    from cellvit_cli.cli.segment import segment

    options = _option_defaults(segment)
    assert set(options) - {"out_dir", "cluster"} <= {f.name for f in fields(SegmentSettings)}
    for name, default in options.items():
        if name not in ("out_dir", "cluster"):
            assert default == default_of(SegmentSettings, name), name


def test_train_options_take_the_train_config_defaults():
    from cellvit_cli.cli.train import train

    options = _option_defaults(train)
    assert options.pop("heads") == ",".join(default_of(TrainConfig, "heads")) == ",".join(HEADS)
    assert options.pop("crop_size") == default_of(AugmentConfig, "crop_size")
    assert AUGMENTATIONS[options.pop("augmentation")] == AugmentConfig()  # --augment standard
    config_fields = {f.name for f in fields(TrainConfig)}
    for name in config_fields & set(options):
        assert options[name] == default_of(TrainConfig, name), name
    assert set(options) - config_fields <= {f.name for f in fields(TrainRequest)} | {
        "resume", "overwrite"}


@pytest.mark.parametrize("argv,message", [
    (["segment", "x", "-o", "y", "--tile-size", "8"],
     "Invalid value for '--tile-size': tile size must be >= 16"),
    (["segment", "x", "-o", "y", "--overlap", "600"],
     "Invalid value for '--overlap': overlap must be >= 0 and < tile size"),
    (["segment", "x", "-o", "y", "--prob-thresh", "1.5"],
     "Invalid value for '--prob-thresh': prob_thresh must be between 0 and 1, got 1.5"),
    (["segment", "x", "-o", "y", "--diameter", "-3"],
     "Invalid value for '--diameter': diameter must be >= 0 (0: auto), got '-3'"),
    (["train", "--images", ".", "--masks", ".", "-o", "m", "--epochs", "0"],
     "Invalid value for '--epochs': epochs must be >= 1"),
    (["train", "--images", ".", "--masks", ".", "-o", "m", "--heads", "star,nuclei"],
     "Invalid value for '--heads': heads must be a comma list of star, flow, boundary, "
     "got star,nuclei"),
    (["train", "--images", ".", "--masks", ".", "-o", "m", "--val-fraction", "0.95"],
     "Invalid value for '--val-fraction': val fraction must be between 0 and 0.9"),
])
def test_bad_settings_are_usage_errors_naming_the_option(argv, message):
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2 and f"Error: {message}\n" in result.output, result.output


def test_bad_settings_come_before_the_heavy_imports():
    heavy = {"torch", "scipy", "stardist"}
    assert exit_code_and_heavy_imports(["segment", "--tile-size", "8", "x", "-o", "y"],
                                       heavy) == ["2"]
    assert exit_code_and_heavy_imports(["train", "--images", ".", "--masks", ".", "-o", "m",
                                        "--crop-size", "16"], heavy) == ["2"]
    for command in ("train", "segment"):  # the help text comes first, then the exit code
        assert exit_code_and_heavy_imports([command, "--help"], heavy)[-1] == "0"
