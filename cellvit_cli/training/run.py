"""Training from folders to a finished model folder: what `cellvit train` calls."""

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from cellvit_cli.training.augment import AugmentConfig
from cellvit_cli.training.data import load_samples, pair_files, read_ids
from cellvit_cli.training.finish import plot_curves, tune_model_thresholds
from cellvit_cli.training.loop import TrainConfig, Trainer

RUN_FILE = "train_config.json"


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


def split_pairs(request: TrainRequest, seed: int) -> tuple[list, list]:
    """Training and validation (image, mask) pairs as the request asks."""
    ids = read_ids(request.ids_file) if request.ids_file else None
    pairs = pair_files(request.images, request.masks, ids)
    if request.val_ids_file or request.val_images:
        val_ids = read_ids(request.val_ids_file) if request.val_ids_file else None
        val = pair_files(request.val_images or request.images, request.val_masks or request.masks,
                         val_ids)
        return pairs, val
    if request.val_fraction:
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, int(round(len(pairs) * request.val_fraction)))
        return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]
    return pairs, []


def run_training(request: TrainRequest, resume: bool = False, progress: bool = True,
                 **settings) -> Path:
    """Load data, train (or resume), tune thresholds on validation, plot curves."""
    out = Path(request.out_dir)
    crop = settings.pop("crop_size", AugmentConfig.crop_size)
    cfg = replace(TrainConfig(augment=AugmentConfig(crop_size=crop)), **settings)
    train_pairs, val_pairs = split_pairs(request, cfg.seed)
    if not train_pairs:
        raise ValueError(f"{request.images}: no training images")
    out.mkdir(parents=True, exist_ok=True)
    cache = request.cache_dir or out / ".target_cache"
    train_samples = load_samples(train_pairs, cfg.in_channels, cfg.heads, cache, progress)
    val_samples = load_samples(val_pairs, cfg.in_channels, cfg.heads, cache, progress)
    trainer = Trainer(train_samples, val_samples, out, cfg)
    if resume:
        trainer.load_checkpoint()
    (out / RUN_FILE).write_text(json.dumps(
        {"request": {k: str(v) for k, v in asdict(request).items()}, "config": asdict(cfg)},
        indent=2, default=str) + "\n")
    trainer.run(progress)
    if val_samples:
        tune_model_thresholds(out, val_samples, trainer.device)
    plot_curves(out)
    return out
