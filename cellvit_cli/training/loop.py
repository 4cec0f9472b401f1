"""The training loop: AdamW with warm-up and cosine decay, validation, best checkpoint, resume."""

import csv
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cellvit_cli.device import (cpu_has_amx, precision_autocast, resolve_device,
                                resolve_precision)
from cellvit_cli.io import atomic_path
from cellvit_cli.modeling import CellViT, ModelConfig, build_model, save_model_folder
from cellvit_cli.modeling.folder import read_state
from cellvit_cli.postprocess import available_modes
from cellvit_cli.settings import TrainConfig
from cellvit_cli.training.augment import random_crop
from cellvit_cli.training.data import Sample, median_diameter
from cellvit_cli.training.losses import total_loss
from cellvit_cli.training.validate import validation_maps, validation_scores

CHECKPOINT_FILE, LOG_FILE = "checkpoint.pt", "train_log.csv"
# what a --resume may change: run longer, validate less often, on another device or precision
RESUMABLE_CHANGES = ("epochs", "time_budget", "val_every", "val_modes", "device", "precision")


@dataclass
class TrainState:
    epoch: int = 0
    step: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    seconds: float = 0.0                 # training time so far, kept across --resume
    best_scores: dict = field(default_factory=dict)  # {'ap50_<mode>': AP} of the best epoch


def lr_factor(step: int, progress: float, warmup_steps: int) -> float:
    """LR multiplier: linear warm-up over `warmup_steps`, then cosine from 1 to 0.01 as
    `progress` (fraction of the run done, by steps or by time) goes from 0 to 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def training_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training steps on `device` (None: fp32) for TrainConfig's
    `precision`: 'auto' is CUDA's mixed precision (bf16 where supported, else fp16), bf16
    on CPUs with AMX (model v2's epochs 1.4x faster) and fp32 elsewhere (AVX512-BF16 alone
    gained nothing end to end: docs/benchmarks.md); 'fp32' and 'bf16' as
    `device.resolve_precision` (bf16 warns where emulated)."""
    if precision == "auto" and device.type == "cpu" and cpu_has_amx():
        return torch.bfloat16
    if precision == "auto" and device.type != "cuda":
        return None
    return resolve_precision(precision, device)


def make_batch(samples: Sequence[Sample], cfg: TrainConfig, step: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Batch `step`: images (B, C, S, S) and {head: (B, C_head, S, S)}; same seed, same batch."""
    rng = np.random.default_rng([cfg.seed, step])
    crops = [random_crop(samples[i], cfg.heads, cfg.n_rays, cfg.augment, rng)
             for i in rng.integers(len(samples), size=cfg.batch_size)]
    images = torch.from_numpy(np.stack([c[0] for c in crops]))
    return images, {h: torch.from_numpy(np.stack([c[1][h] for c in crops])) for h in cfg.heads}


def prefetched_batches(samples, cfg: TrainConfig, steps: range) -> Iterator:
    """`make_batch` for each step, the next one built in a thread beside the network."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(make_batch, samples, cfg, steps.start) if len(steps) else None
        for step in steps:
            batch = pending.result()
            if step + 1 < steps.stop:
                pending = pool.submit(make_batch, samples, cfg, step + 1)
            yield batch


class Trainer:
    """Owns the model, optimiser, schedule and output folder of one training run."""

    def __init__(self, train_samples: Sequence[Sample], val_samples: Sequence[Sample],
                 out_dir: str | os.PathLike, cfg: TrainConfig):
        self.train_samples, self.val_samples, self.cfg = train_samples, val_samples, cfg
        self.out_dir = Path(out_dir)
        self.device = resolve_device(cfg.device)
        self.dtype = training_dtype(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.model: CellViT = build_model(cfg.variant, cfg.heads, cfg.in_channels,
                                          cfg.n_rays).to(self.device)
        self.steps_per_epoch = cfg.steps_per_epoch or math.ceil(len(train_samples) / cfg.batch_size)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.state = TrainState()
        self._epoch_started = time.time()
        self.model_config = ModelConfig(
            cfg.variant, tuple(cfg.heads), cfg.in_channels, cfg.n_rays,
            normalization={"percentiles": list(cfg.norm_percentiles)},
            median_diameter=round(median_diameter(train_samples), 2))

    def start_from(self, name_or_path) -> str:
        """Start from the weights of a model folder or shipped model: every part of the
        network, and each head the model has (fine-tuning). From another variant (a warm
        start of a lighter network) only the tensors whose name and shape it shares.
        Returns what starts untrained ('' when nothing): 'untrained head(s): flow' or, from
        another variant, 'N of M tensors untrained (from variant V)'; ValueError when its
        channels or rays differ, or it shares no weight matrix or kernel."""
        from cellvit_cli.modeling import load_model_folder

        loaded = load_model_folder(name_or_path)
        theirs, ours = loaded.config, self.model_config
        differ = [f"{name} {getattr(theirs, name)!r} (this run: {getattr(ours, name)!r})"
                  for name in ("in_channels", "n_rays")
                  if getattr(theirs, name) != getattr(ours, name)]
        if differ:
            raise ValueError(f"{loaded.path}: cannot start from this model: {', '.join(differ)}")
        state = {k: v for k, v in loaded.model.state_dict().items()
                 if not k.startswith("heads.") or k.split(".")[1] in self.cfg.heads}
        own = self.model.state_dict()
        shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        another = theirs.variant != ours.variant
        if another and not any(v.dim() > 1 for v in shared.values()):  # biases, counters
            raise ValueError(f"{loaded.path}: cannot start from this model: variant "
                             f"{theirs.variant!r} shares no weights with {ours.variant!r}")
        self.model.load_state_dict(shared, strict=False)
        if another:
            return (f"{len(own) - len(shared)} of {len(own)} tensors untrained "
                    f"(from variant {theirs.variant!r})")
        untrained = [h for h in self.cfg.heads if h not in theirs.heads]
        return f"untrained head(s): {', '.join(untrained)}" if untrained else ""

    def train_epoch(self, progress: bool) -> dict[str, float]:
        """One epoch of steps; returns mean losses {'loss': .., '<head>_loss': ..}."""
        from tqdm import tqdm

        self.model.train()
        start = self.state.epoch * self.steps_per_epoch
        steps = range(start, start + self.steps_per_epoch)
        sums: dict[str, float] = {}
        bar = tqdm(prefetched_batches(self.train_samples, self.cfg, steps), total=len(steps),
                   desc=f"epoch {self.state.epoch + 1}/{self.cfg.epochs}", disable=not progress,
                   leave=False)
        for images, targets in bar:
            self._set_lr()
            images = images.to(self.device)
            targets = {h: t.to(self.device) for h, t in targets.items()}
            with precision_autocast(self.device, self.dtype):
                raw = self.model(images)
            loss, parts = total_loss({h: r.float() for h, r in raw.items()}, targets)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.state.step += 1
            for key, value in {"loss": float(loss.detach()), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        return {k if k == "loss" else f"{k}_loss": v / len(steps) for k, v in sums.items()}

    def progress(self) -> float:
        """Fraction of the run done: by time with a time budget, else by steps."""
        if self.cfg.time_budget:
            elapsed = self.state.seconds + time.time() - self._epoch_started
            return elapsed / (60 * self.cfg.time_budget)
        return self.state.step / (self.cfg.epochs * self.steps_per_epoch)

    def _set_lr(self) -> None:
        factor = lr_factor(self.state.step, self.progress(), self.cfg.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * factor

    def validate(self) -> dict[str, float]:
        """{'ap50_<mode>': AP@0.5} on the validation samples with default thresholds."""
        if not self.val_samples:
            return {}
        modes = self.cfg.val_modes or available_modes(self.cfg.heads)
        maps = validation_maps(self.model, self.val_samples, self.device)
        return {f"ap50_{m}": s for m, s in validation_scores(maps, self.val_samples, modes).items()}

    def run(self, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
        """Train until `cfg.epochs`, validating, logging and checkpointing each epoch;
        `log` gets one line per validation (see `validation_line`)."""
        while self.state.epoch < self.cfg.epochs and self.progress() < 1.0:
            self._epoch_started = time.time()
            row = {"epoch": self.state.epoch + 1, "step": self.state.step + self.steps_per_epoch,
                   **self.train_epoch(progress), "lr": self.optimizer.param_groups[0]["lr"]}
            self.state.epoch += 1
            last = self.state.epoch == self.cfg.epochs or self.progress() >= 1.0
            if self.state.epoch % self.cfg.val_every == 0 or last:
                row.update(self.validate())
                self._keep_if_best(row)
                if log is not None:
                    log(validation_line(row, self.state, self.cfg.epochs))
            row["seconds"] = round(time.time() - self._epoch_started, 2)
            self.state.seconds += row["seconds"]
            self._epoch_started = time.time()
            self._log(row)
            self.save_checkpoint()
        if self.state.best_epoch < 0:  # no validation data: the last model is the model
            save_model_folder(self.out_dir, self.model, self.model_config)
        return self.out_dir

    def _keep_if_best(self, row: dict) -> None:
        scores = [v for k, v in row.items() if k.startswith("ap50_")]
        score = float(np.mean(scores)) if scores else -row["loss"]
        if score > self.state.best_score:
            self.state.best_score, self.state.best_epoch = score, self.state.epoch
            self.state.best_scores = {k: v for k, v in row.items() if k.startswith("ap50_")}
            save_model_folder(self.out_dir, self.model, self.model_config)

    def _log(self, row: dict) -> None:
        path = self.out_dir / LOG_FILE
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        rows = [r for r in rows if int(r["epoch"]) < row["epoch"]] + [row]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(rows)

    def save_checkpoint(self) -> None:
        """Everything needed to resume, written atomically to checkpoint.pt: weights,
        optimiser, state, random state, and the model and train configs they belong to."""
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                   "state": asdict(self.state), "model_config": asdict(self.model_config),
                   "train_config": asdict(self.cfg), "torch_rng": torch.get_rng_state()}
        with atomic_path(self.out_dir / CHECKPOINT_FILE) as tmp:
            torch.save(payload, tmp)

    def load_checkpoint(self) -> dict:
        """Continue from checkpoint.pt in the output folder; return the train config it was
        saved with (asdict of a TrainConfig; {} from a checkpoint older than that).
        ValueError naming it when it is damaged, made for another model or trained with
        other settings (`_check_fits`)."""
        path = self.out_dir / CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint to resume from")
        payload = read_state(path)
        saved_cfg = payload.get("train_config") or {}
        self._check_fits(path, payload.get("model_config") or {}, saved_cfg)
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.state = TrainState(**payload["state"])
            torch.set_rng_state(payload["torch_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{path}: does not fit this run's model ({reason}); {_RESUME_HINT}"
                             ) from err
        return saved_cfg

    def _check_fits(self, path: Path, saved_model: dict, saved_cfg: dict) -> None:
        """ValueError naming every setting of the checkpoint's model (variant, heads, channels,
        rays) and train config that differs from this run's, except RESUMABLE_CHANGES."""
        ours = {**asdict(self.model_config), **_flat(asdict(self.cfg))}
        saved = {**{k: saved_model[k] for k in _MODEL_KEYS if k in saved_model},
                 **_flat(saved_cfg)}
        differ = [f"{key} {_plain(value)} (this run: {_plain(ours[key])})"
                  for key, value in saved.items() if key in ours
                  and key not in RESUMABLE_CHANGES and _plain(value) != _plain(ours[key])]
        if differ:
            raise ValueError(f"{path}: made for {', '.join(differ)}; {_RESUME_HINT}")


def validation_line(row: dict, state: TrainState, epochs: int) -> str:
    """One line a person reads after a validation: 'epoch 5/100: loss 0.412, AP@0.5 star
    0.612, flow 0.640 (mean 0.626; best 0.626 at epoch 5)'."""
    scores = {k[len("ap50_"):]: v for k, v in row.items() if k.startswith("ap50_")}
    text = f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4g}"
    if not scores:
        return text + " (no validation data)"
    text += ", AP@0.5 " + ", ".join(f"{mode} {ap:.3f}" for mode, ap in scores.items())
    best = ("new best" if state.best_epoch == row["epoch"]
            else f"best {state.best_score:.3f} at epoch {state.best_epoch}")
    return text + f" (mean {np.mean(list(scores.values())):.3f}; {best})"


_RESUME_HINT = "resume with the settings it was trained with, or start afresh with --overwrite"
_MODEL_KEYS = ("variant", "heads", "in_channels", "n_rays")  # what the weights are made for


def _flat(config: dict) -> dict:
    """A config dict with its nested dicts spelled out: {"augment": {"crop_size": 64}} ->
    {"augment.crop_size": 64}."""
    flat = {}
    for key, value in config.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        flat.update({key if sub is None else f"{key}.{sub}": v for sub, v in items})
    return flat


def _plain(value) -> str:
    """A config value as the command line spells it: heads ('star', 'flow') -> star,flow."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
