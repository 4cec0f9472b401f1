"""Training from folders to a finished model folder: what `cellvit train` calls."""

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cellvit_cli import __version__
from cellvit_cli.io import atomic_path
from cellvit_cli.modeling.folder import (CARD_FILE, CONFIG_FILE, SCORES_FILE, SUMMARY_FILE,
                                         THRESHOLDS_FILE, WEIGHTS_FILE)
from cellvit_cli.settings import TrainConfig, TrainRequest
from cellvit_cli.training.data import load_samples, pair_files, read_ids, require_objects
from cellvit_cli.training.finish import (CURVES_FILE, TrainReport, finish_report,
                                         model_card, plot_curves, tune_model_thresholds,
                                         write_card, write_summary)
from cellvit_cli.training.loop import CHECKPOINT_FILE, LOG_FILE, Trainer

RUN_FILE = "train_config.json"
# what a training run leaves in its model folder: --overwrite removes them all first
MODEL_FOLDER_FILES = (CONFIG_FILE, WEIGHTS_FILE, THRESHOLDS_FILE, CARD_FILE, SCORES_FILE,
                      LOG_FILE, CURVES_FILE, CHECKPOINT_FILE, RUN_FILE, SUMMARY_FILE)


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


def record_run(out: Path, request: TrainRequest, trainer: Trainer, pairs: tuple[list, list],
               saved_cfg: dict | None = None) -> None:
    """train_config.json. A fresh run writes the request, the settings and the (image,
    mask) files used; a resume (`saved_cfg`: the checkpoint's train config) keeps that
    record and adds itself to its "resumes"."""
    path = out / RUN_FILE
    if saved_cfg is not None and path.is_file():
        content = json.loads(path.read_text())
    else:
        train, val = ([[str(i), str(m)] for i, m in p] for p in pairs)
        content = {"request": {k: str(v) for k, v in asdict(request).items()},
                   "config": asdict(trainer.cfg), "pairs": {"train": train, "validation": val}}
    content.setdefault("resumes", [])
    if saved_cfg is not None:
        content["resumes"].append(_resume_record(trainer, saved_cfg))
    _write_json(path, content)


def _resume_record(trainer: Trainer, saved_cfg: dict) -> dict:
    """When a resume ran, from which epoch and step, with which code, and the settings it
    changed ({name: [checkpoint's, now]})."""
    now, saved = _as_json(asdict(trainer.cfg)), _as_json(saved_cfg)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "epoch": trainer.state.epoch, "step": trainer.state.step,
            "code_version": __version__,
            "changed": {k: [saved[k], v] for k, v in now.items() if k in saved and saved[k] != v}}


def _as_json(value):
    """`value` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def _write_json(path: Path, content: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")


def run_training(request: TrainRequest, cfg: TrainConfig, resume: bool = False,
                 overwrite: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> TrainReport:
    """Load data, train (or resume), tune thresholds on validation, plot curves, write the
    model card; return the closing report (also written to train_summary.json). `log` gets
    the lines a person reads while it runs: one per validation, and one before threshold
    tuning."""
    out = Path(request.out_dir)
    train_pairs, val_pairs = split_pairs(request, cfg.seed)
    prepare_out_dir(out, overwrite, resume)
    cache = request.cache_dir or out / ".target_cache"
    loading = dict(cache_dir=cache, progress=progress, percentiles=cfg.norm_percentiles)
    train_samples = load_samples(train_pairs, cfg.in_channels, cfg.heads, **loading)
    require_objects(train_samples, request.masks, "training")
    val_samples = load_samples(val_pairs, cfg.in_channels, cfg.heads, **loading)
    require_objects(val_samples, request.val_masks or request.masks, "validation")
    if overwrite and not resume:
        remove_model_files(out)
    trainer = Trainer(train_samples, val_samples, out, cfg)
    saved_cfg = trainer.load_checkpoint() if resume else None
    if request.init_model is not None and not resume:
        _start_from(trainer, request.init_model, log)
    record_run(out, request, trainer, (train_pairs, val_pairs), saved_cfg)
    trainer.run(progress, log)
    return _finish(trainer, request, log)


def _start_from(trainer: Trainer, init_model: str, log: Callable[[str], None] | None) -> None:
    """Load the weights of `init_model` into the trainer's model and say so."""
    untrained = trainer.start_from(init_model)
    if log is not None:
        extra = f"; {untrained}" if untrained else ""
        log(f"starting from the weights of {init_model}{extra}")


def _finish(trainer: Trainer, request: TrainRequest, log: Callable[[str], None] | None
            ) -> TrainReport:
    """Tune thresholds (with validation data), plot the curves, write train_summary.json
    and the model card (a hand-written README.md is kept); return the report."""
    out, thresholds = trainer.out_dir, {}
    if trainer.val_samples:
        if log is not None:
            log(f"tuning thresholds on {len(trainer.val_samples)} validation image(s) ...")
        thresholds = tune_model_thresholds(out, trainer.val_samples, trainer.device)
    plot_curves(out)
    report = finish_report(trainer, thresholds)
    write_summary(report)
    if not write_card(out, model_card(report, request, trainer.cfg, trainer.model_config,
                                      thresholds)) and log is not None:
        log(f"kept the hand-written {out / CARD_FILE} (not a card `cellvit train` wrote)")
    return report
