"""Training from folders to a finished model folder: what `cellvit train` calls."""

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from cellvit_cli.io import atomic_path
from cellvit_cli.modeling.folder import (CARD_FILE, CONFIG_FILE, SCORES_FILE, THRESHOLDS_FILE,
                                         WEIGHTS_FILE)
from cellvit_cli.training.augment import AugmentConfig
from cellvit_cli.training.data import load_samples, pair_files, read_ids, require_objects
from cellvit_cli.training.finish import (CURVES_FILE, SUMMARY_FILE, TrainReport, finish_report,
                                         plot_curves, tune_model_thresholds, write_summary)
from cellvit_cli.training.loop import CHECKPOINT_FILE, LOG_FILE, TrainConfig, Trainer

RUN_FILE = "train_config.json"
# what a training run leaves in its model folder: --overwrite removes them all first
MODEL_FOLDER_FILES = (CONFIG_FILE, WEIGHTS_FILE, THRESHOLDS_FILE, CARD_FILE, SCORES_FILE,
                      LOG_FILE, CURVES_FILE, CHECKPOINT_FILE, RUN_FILE, SUMMARY_FILE)


@dataclass
class TrainRequest:
    """Where the data is and where the model goes."""

    images: Path
    masks: Path
    ids_file: Path | None = None
    val_images: Path | None = None
    val_masks: Path | None = None
    val_ids_file: Path | None = None
    val_fraction: float | None = None
    out_dir: Path = Path("model")
    cache_dir: Path | None = None
    mask_suffix: str | None = None   # None: found from the names (see cellvit_cli.pairing)


def split_pairs(request: TrainRequest, seed: int) -> tuple[list, list]:
    """Training and validation (image, mask) pairs as the request asks; ValueError when
    either set asked for is empty."""
    ids = read_ids(request.ids_file) if request.ids_file else None
    pairs = pair_files(request.images, request.masks, ids, request.mask_suffix)
    if not pairs:
        raise ValueError(f"{request.images}: no training images (TIFF, PNG or JPEG"
                         + (f" listed in {request.ids_file})" if ids is not None else ")"))
    if request.val_ids_file or request.val_images or request.val_masks:
        return pairs, _validation_pairs(request)
    if request.val_fraction:
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, int(round(len(pairs) * request.val_fraction)))
        if n_val >= len(pairs):
            raise ValueError(f"{request.images}: no training images left: --val-fraction "
                             f"{request.val_fraction} holds out all {len(pairs)} image(s) for "
                             "validation; use --val-fraction 0 or more images")
        return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]
    return pairs, []


def _validation_pairs(request: TrainRequest) -> list:
    images = request.val_images or request.images
    ids = read_ids(request.val_ids_file) if request.val_ids_file else None
    val = pair_files(images, request.val_masks or request.masks, ids, request.mask_suffix)
    if not val:
        raise ValueError(f"{images}: no validation images (TIFF, PNG or JPEG"
                         + (f" listed in {request.val_ids_file})" if ids is not None else ")"))
    return val


def prepare_out_dir(out: Path, overwrite: bool = False, resume: bool = False) -> None:
    """Create the model folder `out`; refuse one that holds a model unless `overwrite` or
    `resume`. ValueError naming `out` when it cannot be a writable folder."""
    held = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if (out / name).is_file()]
    if held and not (resume or overwrite):
        raise ValueError(f"{out}: already holds a model ({held[0]}): pass --overwrite to "
                         "replace it, --resume to continue its training, or another -o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as err:
        raise ValueError(f"{out}: is a file, not a folder") from err
    except NotADirectoryError as err:
        raise ValueError(f"{out}: lies under a file, not a folder") from err
    except OSError as err:
        raise ValueError(f"{out}: cannot create the folder ({err.strerror})") from err
    if not os.access(out, os.W_OK):
        raise ValueError(f"{out}: the folder is not writable")


def remove_model_files(out: Path) -> None:
    """Remove what an earlier run left in `out` (model, card, scores, logs, checkpoint), so
    nothing of the old model stays beside the new one; the target cache stays."""
    for name in MODEL_FOLDER_FILES:
        (out / name).unlink(missing_ok=True)


def write_run_file(out: Path, request: TrainRequest, cfg: TrainConfig, train_pairs: list,
                   val_pairs: list) -> None:
    """train_config.json: the request, the settings and the (image, mask) files used."""
    pairs = {"train": [[str(i), str(m)] for i, m in train_pairs],
             "validation": [[str(i), str(m)] for i, m in val_pairs]}
    content = {"request": {k: str(v) for k, v in asdict(request).items()},
               "config": asdict(cfg), "pairs": pairs}
    with atomic_path(out / RUN_FILE) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")


def run_training(request: TrainRequest, resume: bool = False, progress: bool = True,
                 overwrite: bool = False, log: Callable[[str], None] | None = None,
                 **settings) -> TrainReport:
    """Load data, train (or resume), tune thresholds on validation, plot curves; return the
    closing report (also written to train_summary.json). `log` gets the lines a person
    reads while it runs: one per validation, and one before threshold tuning."""
    out = Path(request.out_dir)
    crop = settings.pop("crop_size", AugmentConfig.crop_size)
    cfg = replace(TrainConfig(augment=AugmentConfig(crop_size=crop)), **settings)
    train_pairs, val_pairs = split_pairs(request, cfg.seed)
    prepare_out_dir(out, overwrite, resume)
    cache = request.cache_dir or out / ".target_cache"
    train_samples = load_samples(train_pairs, cfg.in_channels, cfg.heads, cache, progress)
    require_objects(train_samples, request.masks, "training")
    val_samples = load_samples(val_pairs, cfg.in_channels, cfg.heads, cache, progress)
    require_objects(val_samples, request.val_masks or request.masks, "validation")
    if overwrite and not resume:
        remove_model_files(out)
    trainer = Trainer(train_samples, val_samples, out, cfg)
    if resume:
        trainer.load_checkpoint()
    write_run_file(out, request, cfg, train_pairs, val_pairs)
    trainer.run(progress, log)
    thresholds = {}
    if val_samples:
        if log is not None:
            log(f"tuning thresholds on {len(val_samples)} validation image(s) ...")
        thresholds = tune_model_thresholds(out, val_samples, trainer.device)
    plot_curves(out)
    report = finish_report(trainer, thresholds)
    write_summary(report)
    return report
