"""Train StarDist 2D from scratch on DSB2018 fluo_train within a compute budget in minutes.

Run in the StarDist environment (setup_envs.sh):
    ~/.cache/cellvit-peers/stardist-venv/bin/python benchmarks/peers/train_stardist.py --minutes 110

The recipe is StarDist's own 2D training notebook (examples/2D/2_training.ipynb): 32 rays,
grid (2, 2), one input channel, patches of 256 x 256, batch 4, its default optimiser,
learning rate and ReduceLROnPlateau schedule; images normalised to their 1-99.8 percentiles,
label holes filled; augmentation: random flips/rot90, intensity scale 0.6-2 and shift
+-0.2, Gaussian noise (sigma up to 0.02). Colour images become the mean of their channels,
as in our tool. The notebook's 400 epochs x 100 steps is the cap; a Keras callback stops
training when the budget is spent (checked after every step; the epoch in progress is then
validated and checkpointed as usual, so the run overshoots by one validation at most). The
weights with the best validation loss are kept (StarDist's default), then
`optimize_thresholds` tunes prob/NMS thresholds on fluo_val.

The budget covers the training loop (steps and per-epoch validation), as `cellvit train
--time-budget` does; loading data before and threshold tuning after are timed separately.
The model folder (StarDist's own layout plus train_summary.json) goes outside the repo.
"""

import argparse
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import peerdata

N_RAYS, GRID, PATCH = 32, (2, 2), (256, 256)
NOTEBOOK_EPOCHS, NOTEBOOK_STEPS = 400, 100   # Config2D defaults: train_epochs, train_steps_per_epoch


def parse_args(argv=None) -> argparse.Namespace:
    p = peerdata.training_parser("stardist", __doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=NOTEBOOK_EPOCHS, help="cap on epochs")
    p.add_argument("--steps-per-epoch", type=int, default=NOTEBOOK_STEPS)
    return p.parse_args(argv)


def normalize_all(images: list[np.ndarray]) -> list[np.ndarray]:
    from csbdeep.utils import normalize

    return [normalize(x, 1, 99.8, axis=(0, 1)).astype(np.float32) for x in images]


def augmenter(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's augmenter: flips/rot90, intensity change, a little Gaussian noise."""
    perm = tuple(np.random.permutation(2))
    x, y = x.transpose(perm + tuple(range(2, x.ndim))), y.transpose(perm)
    for axis in range(2):
        if np.random.rand() > 0.5:
            x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    x = x + 0.02 * np.random.uniform(0, 1) * np.random.normal(0, 1, x.shape)
    return x, y


def budget_callback(minutes: float):
    """A Keras callback that stops training once `minutes` of training have passed."""
    from tensorflow import keras

    class TimeBudget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.limit, self.steps, self.epochs, self.stopped = 60.0 * minutes, 0, 0, False

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if time.perf_counter() - self.start >= self.limit:
                self.stopped = self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            self.epochs += 1
            self.elapsed = time.perf_counter() - self.start
            print(f"[budget] epoch {self.epochs}: {self.steps} steps, "
                  f"{self.elapsed / 60:.2f} of {minutes:g} min", flush=True)

    return TimeBudget()


def train(args: argparse.Namespace) -> dict:
    import tensorflow as tf
    from stardist import calculate_extents, fill_label_holes
    from stardist.models import Config2D, StarDist2D

    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    watch = peerdata.Stopwatch()
    with watch("data"):
        train_ids, x_train, y_train = peerdata.load_split(args.data, peerdata.TRAIN_SPLIT, args.limit)
        val_ids, x_val, y_val = peerdata.load_split(args.data, peerdata.VAL_SPLIT, args.val_limit)
        x_train, x_val = normalize_all(x_train), normalize_all(x_val)
        y_train = [fill_label_holes(y) for y in y_train]
        y_val = [fill_label_holes(y) for y in y_val]
    print(f"data: {len(x_train)} train, {len(x_val)} val images ({watch.seconds['data']:.0f} s)")

    config = Config2D(n_rays=N_RAYS, grid=GRID, n_channel_in=1, train_patch_size=PATCH,
                      use_gpu=False, train_tensorboard=False)
    if args.out.exists():
        shutil.rmtree(args.out)
    model = StarDist2D(config, name=args.out.name, basedir=str(args.out.parent))
    median_size = calculate_extents(y_train, np.median)
    fov = np.array(model._axes_tile_overlap("YX"))
    print(f"median object size {median_size}, network field of view {fov}")
    if any(median_size > fov):
        print("warning: median object size larger than the field of view of the network")

    model.prepare_for_training()
    budget = budget_callback(args.minutes)
    model.callbacks.append(budget)
    with watch("train"):
        history = model.train(x_train, y_train, validation_data=(x_val, y_val),
                              augmenter=augmenter, epochs=args.epochs,
                              steps_per_epoch=args.steps_per_epoch, seed=args.seed)
    with watch("thresholds"):
        thresholds = model.optimize_thresholds(x_val, y_val)
    val_loss = history.history.get("val_loss", [])
    return {
        "peer": "stardist", "model_dir": args.out, "budget_minutes": args.minutes,
        "train_seconds": watch.seconds["train"], "steps": budget.steps,
        "epochs_run": budget.epochs, "stopped_by": "budget" if budget.stopped else "epoch cap",
        "epoch_cap": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": config.train_batch_size, "patch_size": list(PATCH), "n_rays": N_RAYS,
        "grid": list(GRID), "learning_rate": config.train_learning_rate,
        "best_val_loss": min(val_loss) if val_loss else None, "val_loss": val_loss,
        "thresholds": thresholds, "n_train": len(train_ids), "n_val": len(val_ids),
        "median_object_size": median_size, "field_of_view": fov,
        "seconds": watch.seconds, "versions": versions(), "machine": peerdata.machine(),
        "command": sys.argv,
    }


def versions() -> dict:
    import csbdeep
    import stardist
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "stardist": stardist.__version__,
            "csbdeep": csbdeep.__version__, "numpy": np.__version__}


def main(argv=None) -> None:
    args = parse_args(argv)
    summary_path = args.out / "train_summary.json"
    if peerdata.already_trained(summary_path, args.minutes, args.force):
        return
    summary = train(args)
    peerdata.write_json(summary_path, summary)
    print(f"stardist: budget {args.minutes:g} min, trained {summary['train_seconds'] / 60:.2f} min, "
          f"{summary['steps']} steps in {summary['epochs_run']} epoch(s) "
          f"(stopped by {summary['stopped_by']}), thresholds {summary['thresholds']}; "
          f"threshold tuning {summary['seconds']['thresholds']:.0f} s; model in {args.out}")


if __name__ == "__main__":
    main()
