"""After training: thresholds tuned on validation data, the training curves, the closing
report (summary lines and warnings a person reads, train_summary.json) and the model card
(README.md)."""

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from cellvit_cli import __version__
from cellvit_cli.io import atomic_path
from cellvit_cli.modeling import ModelConfig, load_model_folder, save_thresholds
from cellvit_cli.modeling.folder import CARD_FILE, SUMMARY_FILE
from cellvit_cli.settings import TrainConfig, TrainRequest
from cellvit_cli.training.data import Sample
from cellvit_cli.training.loop import LOG_FILE, Trainer
from cellvit_cli.postprocess import available_modes
from cellvit_cli.training.validate import validation_maps

CURVES_FILE = "training_curves.png"


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
    saying why the model may be useless; train_images, val_images: the images of each set.
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
    train_images: int = 0
    val_images: int = 0


def finish_report(trainer: Trainer, thresholds: dict) -> TrainReport:
    """The report of `trainer`'s run, with the tuned `thresholds` ({} when none)."""
    state = trainer.state
    report = TrainReport(
        str(trainer.out_dir), state.epoch, state.step, round(state.seconds, 1),
        state.best_epoch if state.best_epoch >= 0 else None,
        {k[len("ap50_"):]: v for k, v in state.best_scores.items()},
        thresholds.get("scores", {}), thresholds.get("default_mode"),
        train_images=len(trainer.train_samples), val_images=len(trainer.val_samples))
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


CARD_MARK = "<!-- model card written by `cellvit train`: a card without this line is kept -->"


def model_card(report: TrainReport, request: TrainRequest, cfg: TrainConfig,
               config: ModelConfig, thresholds: dict) -> str:
    """README.md of a trained model folder (Markdown): what the model is, its data, how it
    was trained, its validation scores and thresholds, when and with which code."""
    low, high = config.percentiles
    rows = [("variant", f"`{config.variant}`"), ("heads", ", ".join(config.heads)),
            ("input", f"{config.in_channels} channel(s), normalised to the {low:g} / "
                      f"{high:g} percentiles"),
            ("median object diameter", f"{config.median_diameter:g} px"),
            ("training data", _data_line(report.train_images, request.images, request.masks,
                                         request.ids_file)),
            ("validation data", _validation_line(report.val_images, request)),
            ("training", f"{report.epochs} epoch(s), {report.steps} steps of {cfg.batch_size} "
                         f"crops of {cfg.augment.crop_size} px "
                         f"({report.steps * cfg.batch_size:,} crops), {report.seconds:.0f} s"),
            ("kept", f"epoch {report.best_epoch}" if report.best_epoch is not None
             else "the last epoch")]
    if request.init_model is not None:
        rows.insert(5, ("started from", f"the weights of `{request.init_model}` (fine-tuned)"))
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [CARD_MARK, f"# {Path(report.out_dir).resolve().name}", "",
             f"Trained by `cellvit train` (cellvit-cli {__version__}) on {date}; the full "
             "settings and files are in `train_config.json`, the log in `train_log.csv`.", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += _score_lines(report, thresholds)
    if report.warnings:
        lines += ["## Warnings", "", *[f"- {w}" for w in report.warnings], ""]
    return "\n".join(lines)


def _data_line(n_images: int, images, masks, ids_file=None) -> str:
    listed = f", listed in `{ids_file}`" if ids_file else ""
    return f"{n_images} image(s) of `{images}` (masks `{masks}`{listed})"


def _validation_line(n_images: int, request: TrainRequest) -> str:
    if not n_images:
        return "none (thresholds not tuned)"
    if request.val_images or request.val_masks or request.val_ids_file:
        return _data_line(n_images, request.val_images or request.images,
                          request.val_masks or request.masks, request.val_ids_file)
    return f"{n_images} image(s) held out of the training data (--val-fraction)"


def _score_lines(report: TrainReport, thresholds: dict) -> list[str]:
    """The validation AP@0.5 per mode (default thresholds at the kept epoch, then tuned)
    and the tuned thresholds, as Markdown; [] without validation data."""
    if not report.best_scores and not report.tuned:
        return []
    lines = ["## Validation (AP@0.5)", "",
             "| mode | default thresholds | tuned | thresholds.json |", "|---|---|---|---|"]
    for mode in dict.fromkeys([*report.best_scores, *report.tuned]):
        default, tuned = report.best_scores.get(mode), report.tuned.get(mode, {}).get("ap50")
        values = ", ".join(f"{k} {v:g}" for k, v in thresholds.get(mode, {}).items())
        lines.append(f"| {mode} | {_score(default)} | {_score(tuned)} | {values or '-'} |")
    if report.default_mode:
        lines += ["", f"Default mode: `{report.default_mode}` (the best tuned AP@0.5)."]
    return lines + [""]


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def write_card(folder: Path, card: str) -> bool:
    """Write README.md in `folder` unless it holds one that `cellvit train` did not write (a
    hand-written card is kept); return whether it was written."""
    path = Path(folder) / CARD_FILE
    if path.is_file() and not path.read_text(errors="replace").startswith(CARD_MARK):
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(card)
    return True
