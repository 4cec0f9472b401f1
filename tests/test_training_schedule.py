"""The learning-rate schedule (warm-up, cosine by steps or by time), the --time-budget stop
and the choice of the kept (best validation) epoch, with the nano variant on a real crop.

The clock of the training loop is replaced by one that moves 15 s per optimiser step, and
validation scores are scripted where the choice of epoch is tested: the loop, schedule,
checkpointing and model folder are the real ones."""

import csv
import math
from types import SimpleNamespace

import pytest
import torch

from cellvit_cli.modeling import load_model_folder
from cellvit_cli.modeling.folder import read_state
from cellvit_cli.preprocess import normalize_percentile
from cellvit_cli.targets import clean_labels
from cellvit_cli.training import loop
from cellvit_cli.training.augment import AugmentConfig
from cellvit_cli.training.data import Sample
from cellvit_cli.training.finish import finish_report
from cellvit_cli.training.loop import TrainConfig, Trainer, lr_factor

SECONDS_PER_STEP = 15.0


@pytest.fixture(scope="module")
def sample(nuclei):
    image, labels = nuclei
    return Sample("n", normalize_percentile(image[None, :128, :128]),
                  clean_labels(labels[:128, :128]))


def _trainer(sample, out, **changes) -> Trainer:
    cfg = TrainConfig(**{"variant": "vit_nano_p16", "heads": ("boundary",), "epochs": 1,
                         "steps_per_epoch": 2, "batch_size": 1, "warmup_steps": 1,
                         "augment": AugmentConfig(crop_size=64), "device": "cpu", **changes})
    return Trainer([sample], [], out, cfg)


@pytest.fixture
def clock(monkeypatch):
    """The training loop's clock, moved by hand: clock.now (s)."""
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(loop, "time", SimpleNamespace(time=lambda: clock.now))
    return clock


def _record_steps(trainer: Trainer, clock=None) -> list[float]:
    """The learning rate of every optimiser step of `trainer`, in order; each step moves
    `clock` on by SECONDS_PER_STEP."""
    rates, step = [], trainer.optimizer.step

    def recorded_step(*args, **kwargs):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        if clock is not None:
            clock.now += SECONDS_PER_STEP
        return step(*args, **kwargs)

    trainer.optimizer.step = recorded_step
    return rates


def _cosine(progress: float) -> float:
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def test_warm_up_is_linear_up_to_the_full_rate():
    assert [lr_factor(s, 0.0, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(3, 0.9, 4) == 1.0  # progress does not matter inside the warm-up
    assert lr_factor(4, 0.0, 4) == pytest.approx(1.0)  # then the cosine starts at 1


def test_cosine_decays_from_1_to_a_hundredth_and_stays_there():
    progress = [i / 10 for i in range(11)]
    factors = [lr_factor(1000, p, 10) for p in progress]
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.01)
    assert factors[5] == pytest.approx(0.505)
    assert factors == pytest.approx([_cosine(p) for p in progress])
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert lr_factor(1000, 1.7, 10) == pytest.approx(0.01)  # past the end: the floor
    assert lr_factor(0, 0.3, 0) == pytest.approx(_cosine(0.3))  # no warm-up


def test_progress_counts_steps_without_a_budget_and_time_with_one(sample, tmp_path, clock):
    by_steps = _trainer(sample, tmp_path / "a", epochs=2, steps_per_epoch=3)
    by_steps.state.step = 3
    assert by_steps.progress() == 0.5
    by_time = _trainer(sample, tmp_path / "b", time_budget=1.5)  # 90 s
    by_time.state.step, by_time.state.seconds = 3, 30.0  # 30 s in earlier epochs
    clock.now += 15.0  # and 15 s into this one
    assert by_time.progress() == pytest.approx(0.5)


def test_the_rate_follows_the_steps_of_the_run(sample, tmp_path):
    trainer = _trainer(sample, tmp_path, epochs=2, steps_per_epoch=2, warmup_steps=2)
    rates = _record_steps(trainer)
    trainer.run(progress=False)
    expected = [0.5, 1.0, _cosine(2 / 4), _cosine(3 / 4)]
    assert rates == pytest.approx([trainer.cfg.lr * f for f in expected])


def test_a_time_budget_stops_training_and_the_rate_follows_time(sample, tmp_path, clock):
    """1 minute at 15 s a step: 4 steps (2 epochs of the 100 asked for), the last validated
    although --val-every is 10; the rate decays by time, not by the 200 steps planned."""
    trainer = _trainer(sample, tmp_path, epochs=100, time_budget=1.0, val_every=10)
    rates = _record_steps(trainer, clock)
    validated = []

    def validate():
        validated.append(trainer.state.epoch)  # the epoch just trained
        return {"ap50_boundary": 0.5}

    trainer.validate = validate
    trainer.run(progress=False)
    assert (trainer.state.epoch, trainer.state.step) == (2, 4)
    assert trainer.state.seconds == pytest.approx(60.0)
    assert validated == [2]
    expected = [1.0] + [_cosine(step * SECONDS_PER_STEP / 60) for step in (1, 2, 3)]
    assert rates == pytest.approx([trainer.cfg.lr * f for f in expected])
    with open(tmp_path / "train_log.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert read_state(tmp_path / "checkpoint.pt")["state"]["epoch"] == 2


def test_the_kept_model_is_that_of_the_best_validation_epoch(sample, tmp_path):
    trainer = _trainer(sample, tmp_path, epochs=3)
    scores, weights = iter([0.2, 0.6, 0.4]), []

    def scripted_validation():
        weights.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        return {"ap50_boundary": next(scores)}

    trainer.validate = scripted_validation
    lines = []
    trainer.run(progress=False, log=lines.append)
    assert trainer.state.best_epoch == 2 and trainer.state.best_scores == {"ap50_boundary": 0.6}
    kept = load_model_folder(tmp_path).model.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in weights[1].items())
    assert not all(torch.equal(kept[k], v) for k, v in weights[2].items())
    assert lines[1].endswith("new best)")
    assert lines[2].endswith("(mean 0.400; best 0.600 at epoch 2)")
    assert read_state(tmp_path / "checkpoint.pt")["state"]["best_epoch"] == 2
    report = finish_report(trainer, {})
    assert report.best_epoch == 2 and report.best_scores == {"boundary": 0.6}
