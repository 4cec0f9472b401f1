"""After training: thresholds tuned on validation data, the training curves, and the
closing report (summary lines and warnings a person reads, train_summary.json)."""

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cellvit_cli.io import atomic_path
from cellvit_cli.modeling import load_model_folder, save_thresholds
from cellvit_cli.training.data import Sample
from cellvit_cli.training.loop import LOG_FILE, Trainer
from cellvit_cli.postprocess import available_modes
from cellvit_cli.training.validate import validation_maps

CURVES_FILE = "training_curves.png"
SUMMARY_FILE = "train_summary.json"  # the closing report; `cellvit models` shows its warnings


def tune_model_thresholds(model_dir: Path, val_samples: Sequence[Sample],
                          device: torch.device) -> dict:
    """Tune every mode's thresholds on `val_samples`; write and return thresholds.json."""
    from cellvit_cli.training.tune import tune_thresholds

    loaded = load_model_folder(model_dir, device)
    maps = validation_maps(loaded.model, val_samples, device)
    thresholds = tune_thresholds(maps, [s.labels for s in val_samples],
                                 available_modes(loaded.config.heads))
    save_thresholds(model_dir, thresholds)
    return thresholds


def plot_curves(model_dir: Path) -> Path:
    """training_curves.png: losses per epoch and validation AP@0.5 per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((Path(model_dir) / LOG_FILE).open()))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for key in [k for k in rows[0] if k.endswith("loss")]:
        ax_loss.plot(epochs, [float(r[key]) for r in rows], label=key)
    for key in dict.fromkeys(k for r in rows for k in r if k.startswith("ap50_")):
        points = [(e, float(r[key])) for e, r in zip(epochs, rows) if r.get(key)]
        ax_ap.plot(*zip(*points), marker=".", label=key[5:])
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_ap.set(xlabel="epoch", ylabel="validation AP@0.5 (default thresholds)", ylim=(0, 1))
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = Path(model_dir) / CURVES_FILE
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out


@dataclass
class TrainReport:
    """How a finished run went: where the model is, how long it trained, its scores.

    best_epoch: the epoch whose model is kept (best mean validation AP@0.5; without
    validation data, the lowest training loss); best_scores: {mode: AP@0.5 with default
    thresholds} at that epoch ({} without validation data); tuned: thresholds.json's
    "scores" ({mode: {"ap50", "ap75", ...}}, {} when nothing was tuned); warnings: lines
    saying why the model may be useless.
    """

    out_dir: str
    epochs: int
    steps: int
    seconds: float
    best_epoch: int | None = None
    best_scores: dict[str, float] = field(default_factory=dict)
    tuned: dict = field(default_factory=dict)
    default_mode: str | None = None
    warnings: list[str] = field(default_factory=list)


def finish_report(trainer: Trainer, thresholds: dict) -> TrainReport:
    """The report of `trainer`'s run, with the tuned `thresholds` ({} when none)."""
    state = trainer.state
    report = TrainReport(
        str(trainer.out_dir), state.epoch, state.step, round(state.seconds, 1),
        state.best_epoch if state.best_epoch >= 0 else None,
        {k[len("ap50_"):]: v for k, v in state.best_scores.items()},
        thresholds.get("scores", {}), thresholds.get("default_mode"))
    report.warnings = training_warnings(report, trainer.cfg.warmup_steps,
                                        trainer.optimizer.param_groups[0]["lr"], trainer.cfg.lr)
    return report


def training_warnings(report: TrainReport, warmup_steps: int, last_lr: float,
                      lr: float) -> list[str]:
    """Why the model of `report` may be useless: training ended inside the learning-rate
    warm-up, or validation AP@0.5 is 0 in every mode."""
    warnings = []
    if report.steps < warmup_steps:
        warnings.append(
            f"training ended after {report.steps} step(s), inside the learning-rate warm-up "
            f"of {warmup_steps} steps (the rate reached {last_lr:.1e}, not --lr {lr:g}): the "
            "model is barely trained; train for more steps (--epochs, --steps-per-epoch or "
            "--time-budget)")
    aps = list(report.best_scores.values()) + [s["ap50"] for s in report.tuned.values()]
    if aps and max(aps) == 0:
        warnings.append("validation AP@0.5 is 0 in every mode: the model finds no object "
                        "correctly, and `cellvit segment` with it will give wrong cells; "
                        "train longer, or check that the masks belong to the images")
    return warnings


def report_lines(report: TrainReport) -> list[str]:
    """The closing summary: what ran, the best epoch and its scores, the tuned scores, where
    the model is and how to use it, and the warnings."""
    lines = [f"trained {report.epochs} epoch(s), {report.steps} steps, in {report.seconds:.1f} s"]
    if not report.best_scores:
        kept = (f"the model of epoch {report.best_epoch} (lowest training loss)"
                if report.best_epoch is not None else "the last model")
        lines.append(f"no validation data: kept {kept}; thresholds are the defaults, not "
                     "tuned (give --val-fraction or --val-images/--val-masks)")
    else:
        scores = ", ".join(f"{m} {ap:.3f}" for m, ap in report.best_scores.items())
        lines.append(f"best epoch {report.best_epoch}: validation AP@0.5 {scores} "
                     "(default thresholds)")
    if report.tuned:
        scores = ", ".join(f"{m} {s['ap50']:.3f}" for m, s in report.tuned.items())
        lines.append(f"tuned thresholds: AP@0.5 {scores}; default mode {report.default_mode}")
    lines.append(f"model written to {report.out_dir}; use it with: cellvit segment IMAGES "
                 f"--model {report.out_dir}")
    return lines + [f"warning: {w}" for w in report.warnings]


def write_summary(report: TrainReport) -> Path:
    """train_summary.json in the model folder: the report as JSON."""
    path = Path(report.out_dir) / SUMMARY_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return path
