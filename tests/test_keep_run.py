"""A run kept with a compact checkpoint (training/keep.py) resumes where it stopped and
continues the curve: epoch 3 after a kept epoch 2 has the loss of an uninterrupted run
(all 9 steps are in the warm-up, so the learning rate does not depend on --epochs)."""

import csv

from click.testing import CliRunner

from cellvit_cli.cli import main
from cellvit_cli.training.keep import keep_run
from test_training import folders  # noqa: F401  (the fixture: real image/mask pairs)


def _train(folders, out, *extra):
    images, masks = folders
    return CliRunner().invoke(main, [
        "train", "--images", str(images), "--masks", str(masks), "--variant", "vit_nano_p16",
        "--heads", "boundary", "--steps-per-epoch", "3", "--batch-size", "2", "--crop-size",
        "64", "--device", "cpu", "--val-fraction", "0.25", "-o", str(out), *map(str, extra)])


def _losses(folder) -> list[float]:
    with open(folder / "train_log.csv") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


def test_a_kept_run_resumes_and_continues_the_curve(folders, tmp_path):  # noqa: F811
    straight, part, kept = tmp_path / "straight", tmp_path / "part", tmp_path / "kept"
    assert _train(folders, straight, "--epochs", "3").exit_code == 0
    assert _train(folders, part, "--epochs", "2").exit_code == 0
    keep_run(part, kept)
    for name in ("checkpoint.pt", "weights.pt"):
        size = {d: (d / name).stat().st_size for d in (part, kept)}
        assert size[kept] < 0.6 * size[part], name
    assert not (kept / ".target_cache").exists() and (kept / "train_log.csv").is_file()
    result = _train(folders, kept, "--epochs", "3", "--resume")
    assert result.exit_code == 0, result.output
    assert "trained 3 epoch(s), 9 steps" in result.output
    resumed, uninterrupted = _losses(kept), _losses(straight)
    assert len(resumed) == 3 and resumed[:2] == uninterrupted[:2]
    assert abs(resumed[2] - uninterrupted[2]) < 0.01 * uninterrupted[2]
