"""Score a folder of predicted label images against a folder of ground truth.

Pairs files by name, matches objects (`metrics`), and writes the report: summary.json,
per_image.csv, scores.png and a console table.
"""

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, metrics
from .io import InputError, atomic_path, read_labels
from .pairing import (GROUND_TRUTH, PREDICTIONS, Pairing, guess_suffixes, list_files, pair_folders,
                      shown)

HEADLINE_THRESHS = {"ap_50": ("ap", 0.5), "ap_75": ("ap", 0.75), "f1_50": ("f1", 0.5),
                    "pq_50": ("pq", 0.5)}


@dataclass
class Evaluation:
    """Scores of paired label images (`result`) and the names and files they came from."""

    pairing: Pairing
    result: metrics.DatasetScores


def parse_thresholds(text: str) -> tuple[float, ...]:
    """'0.5:0.05:0.95' (start:step:stop, stop included) or '0.5,0.75' -> IoU thresholds.

    Raises ValueError unless every threshold is in (0, 1] and a range goes up.
    """
    is_range = ":" in text
    parts = text.split(":") if is_range else [p for p in text.split(",") if p.strip()]
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        numbers = None
    if numbers is None or (is_range and len(numbers) != 3):
        raise ValueError(f"'{text}' is neither start:step:stop nor a comma list of numbers")
    values = _threshold_range(text, *numbers) if is_range else numbers
    if not values or not all(0 < v <= 1 for v in values):
        raise ValueError(f"'{text}': IoU thresholds must lie in (0, 1]")
    return tuple(sorted(set(values)))


def _threshold_range(text: str, start: float, step: float, stop: float) -> list[float]:
    """start, start + step, ... up to stop (included); ValueError unless it goes up."""
    if step <= 0:
        raise ValueError(f"'{text}': the step of start:step:stop must be positive")
    if stop < start:
        raise ValueError(f"'{text}': the range runs down (start {start:g} > stop {stop:g}); "
                         f"write it upwards, e.g. {stop:g}:{step:g}:{start:g}")
    count = int(np.floor((stop - start) / step + 1e-9)) + 1
    return [round(start + i * step, 6) for i in range(count)]


def pair_files(pred_dir, gt_dir, pred_suffix: str | None = None,
               gt_suffix: str | None = None) -> Pairing:
    """Pair predicted and ground-truth label files by name (`cellvit_cli.pairing`).

    A suffix None is found from the names: predictions end in _labels, _cp_masks, _masks,
    _seg.npy or nothing; ground truth in _masks, _mask, _labels, _seg.npy or nothing.
    Files named otherwise are ignored. PairingError (a ValueError) on ambiguous names.
    """
    return pair_folders(pred_dir, gt_dir, PREDICTIONS.fixed(pred_suffix),
                        GROUND_TRUTH.fixed(gt_suffix))


def no_pairs_message(pred_dir, gt_dir, pred_suffix: str | None = None,
                     gt_suffix: str | None = None, limit: int = 3) -> str:
    """Why nothing paired: some names seen in each folder, the suffixes tried, and the
    flags to use (with suffixes that would pair them, when cutting names finds some)."""
    pred_naming, gt_naming = PREDICTIONS.fixed(pred_suffix), GROUND_TRUTH.fixed(gt_suffix)
    seen = {}
    for folder, naming in ((pred_dir, pred_naming), (gt_dir, gt_naming)):
        files = list_files(folder, naming.extensions)
        names = ", ".join(p.name for p in files[:limit]) + (
            f" (+{len(files) - limit} more)" if len(files) > limit else "")
        seen[folder] = (files, names or "no label images (TIFF, PNG or _seg.npy)")
    text = (f"no pairs: no prediction in {pred_dir} has a ground truth in {gt_dir}. "
            f"Seen: {pred_dir}: {seen[pred_dir][1]}; {gt_dir}: {seen[gt_dir][1]}. "
            f"Names must match once a suffix is removed (predictions: "
            f"{pred_naming.describe()}; ground truth: {gt_naming.describe()})")
    guess = guess_suffixes(seen[pred_dir][0], seen[gt_dir][0])
    if guess:
        pred_guess, gt_guess, count = guess
        return text + (f"; --pred-suffix '{pred_guess}' --gt-suffix '{gt_guess}' would pair "
                       f"{count} file(s)")
    return text + "; name the suffixes with --pred-suffix and --gt-suffix ('' for none)"


def _load_pairs(pairing: Pairing, binary_gt: bool
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for _, pred_path, gt_path in pairing.pairs:
        gt, pred = read_labels(gt_path, label_binary=binary_gt), read_labels(pred_path)
        if gt.shape != pred.shape:
            raise InputError(pred_path, f"shape {pred.shape} differs from the ground truth "
                                        f"{gt_path.name} {gt.shape}")
        yield gt, pred


def evaluate(pairing: Pairing, iou_threshs: Sequence[float] = metrics.DEFAULT_IOU_THRESHS,
             binary_gt: bool = False) -> Evaluation:
    """Read every pair and match its objects.

    InputError on a bad file; BinaryMaskError on a label image that is a binary mask (0/1,
    several objects), unless `binary_gt`, which labels the ground truth's connected objects.
    """
    if not pairing.pairs:
        raise ValueError("no prediction/ground-truth pairs to evaluate")
    pairs = _load_pairs(pairing, binary_gt)
    return Evaluation(pairing, metrics.evaluate_pairs(pairs, iou_threshs))


def check_output_dir(path) -> None:
    """InputError naming `path` unless it is, or can become, a writable folder (creates
    nothing, so a failed evaluation leaves no empty report folder)."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(path, "is a file, not a folder" if existing == path
                         else f"lies under {existing}, a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot write there: {existing} is not writable")


def _at(rows: list[dict], name: str, thresh: float) -> float | None:
    return next((row[name] for row in rows if abs(row["iou_thresh"] - thresh) < 1e-9), None)


def headline(evaluation: Evaluation) -> dict[str, float | None]:
    """AP@0.5, AP@0.75, mean AP over the thresholds, F1@0.5, PQ@0.5 (pooled) and AJI.

    A figure whose threshold was not evaluated is None.
    """
    pooled = metrics.pooled_scores(evaluation.result)
    figures = {key: _at(pooled, name, t) for key, (name, t) in HEADLINE_THRESHS.items()}
    figures["mean_ap"] = float(np.mean([row["ap"] for row in pooled]))
    aji = metrics.dataset_aji(evaluation.result)
    return figures | {"aji": aji["pooled"], "aji_averaged": aji["averaged"]}


def summary(evaluation: Evaluation, settings: dict) -> dict:
    """The content of summary.json."""
    result, pairing = evaluation.result, evaluation.pairing
    return {
        "cellvit_version": __version__,
        "settings": settings | {"pred_suffix_used": shown(pairing.suffixes[0]),
                                "gt_suffix_used": shown(pairing.suffixes[1])},
        "n_images": len(pairing.pairs),
        "n_true": sum(c[0].n_true for c in result.counts),
        "n_pred": sum(c[0].n_pred for c in result.counts),
        "iou_thresholds": list(result.iou_threshs),
        "headline": headline(evaluation),
        "pooled": metrics.pooled_scores(result),
        "averaged": metrics.averaged_scores(result),
        "unmatched": {"pred": [str(p) for p in pairing.unpaired],
                      "gt": [str(p) for p in pairing.unpaired_partners]},
    }


def per_image_rows(evaluation: Evaluation) -> list[dict]:
    """One row per image and threshold: counts, scores and the image's AJI."""
    rows = []
    parts = zip(evaluation.pairing.pairs, evaluation.result.counts, evaluation.result.aji_parts)
    for (name, pred_path, gt_path), image_counts, (inter, union) in parts:
        aji = metrics.aji_from_parts(inter, union)
        for counts in image_counts:
            rows.append({"image": name, "pred_file": pred_path.name, "gt_file": gt_path.name,
                         "iou_thresh": counts.iou_thresh, "n_true": counts.n_true,
                         "n_pred": counts.n_pred, "tp": counts.tp, "fp": counts.fp,
                         "fn": counts.fn} | metrics.scores(counts) | {"aji": aji})
    return rows


def format_table(report: dict) -> str:
    """Console table of pooled scores per threshold, the image-averaged AP and the headline."""
    lines = [f"{report['n_images']} images, {report['n_true']} true objects, "
             f"{report['n_pred']} predicted",
             f"{'IoU':>5} {'TP':>7} {'FP':>7} {'FN':>7} {'prec':>6} {'recall':>6} {'F1':>6} "
             f"{'AP':>6} {'AP img':>6} {'PQ':>6}"]
    for row, avg in zip(report["pooled"], report["averaged"]):
        lines.append(f"{row['iou_thresh']:>5.2f} {row['tp']:>7d} {row['fp']:>7d} "
                     f"{row['fn']:>7d} {row['precision']:>6.3f} {row['recall']:>6.3f} "
                     f"{row['f1']:>6.3f} {row['ap']:>6.3f} {avg['ap']:>6.3f} {row['pq']:>6.3f}")
    figures = report["headline"]
    shown = [f"{key} {value:.3f}" for key, value in figures.items() if value is not None]
    lines.append("pooled: " + ", ".join(shown))
    return "\n".join(lines)


def write_report(evaluation: Evaluation, settings: dict, out_dir) -> dict:
    """Write summary.json, per_image.csv and scores.png into `out_dir` (atomically each).

    Returns the summary dict; InputError naming `out_dir` when it cannot be written.
    """
    out_dir = Path(out_dir)
    report = summary(evaluation, settings)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        _write_csv(out_dir / "per_image.csv", per_image_rows(evaluation))
        plot_scores(report, out_dir / "scores.png")
    except OSError as err:
        raise InputError(out_dir, f"cannot write the report ({err.strerror})") from err
    return report


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


def plot_scores(report: dict, path) -> None:
    """Line plot of pooled scores (and image-averaged AP) against the IoU threshold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    threshs = [row["iou_thresh"] for row in report["pooled"]]
    for name, label in (("ap", "AP"), ("f1", "F1"), ("precision", "precision"),
                        ("recall", "recall"), ("pq", "PQ")):
        axes.plot(threshs, [row[name] for row in report["pooled"]], marker="o", label=label)
    axes.plot(threshs, [row["ap"] for row in report["averaged"]], linestyle="--",
              label="AP (mean of images)")
    axes.set(xlabel="IoU threshold", ylabel="score", ylim=(0, 1.02),
             title=f"{report['n_images']} images, {report['n_true']} objects")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
