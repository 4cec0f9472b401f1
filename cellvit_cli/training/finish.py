"""After training: thresholds tuned on validation data, and the training curves."""

import csv
from collections.abc import Sequence
from pathlib import Path

import torch

from cellvit_cli.io import atomic_path
from cellvit_cli.modeling import load_model_folder, save_thresholds
from cellvit_cli.training.data import Sample
from cellvit_cli.training.loop import LOG_FILE
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
