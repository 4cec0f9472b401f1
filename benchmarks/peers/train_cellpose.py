"""Train Cellpose 3 from scratch on DSB2018 fluo_train within a compute budget in minutes.

Run in the Cellpose environment (setup_envs.sh):
    ~/.cache/cellvit-peers/cellpose-venv/bin/python benchmarks/peers/train_cellpose.py --minutes 110

The recipe is Cellpose's own training from scratch (`python -m cellpose --train
--pretrained_model None`, which calls `cellpose.train.train_seg`), with its command-line
defaults: SGD, learning rate 0.2, momentum 0.9, weight decay 1e-5, batch 8, patches of 224,
random rotation/flip/zoom (scale range 0.5), images rescaled to diam_mean in training,
images with fewer than 5 objects dropped, 1-99 percentile normalisation, channels [0, 0]
(grey; colour images become the mean of their channels first, as in our tool). diam_mean
is the training objects' median equivalent-circle diameter (what `cellvit train` records),
not the 30 px of the cytoplasm models.

Cellpose's learning-rate schedule is fixed by n_epochs before training starts (10 warm-up
epochs, then constant, halving over the last 100 epochs when n_epochs > 300), so the budget
sets n_epochs and nimg_per_epoch up front: a short calibration (a few training steps and
validation batches on a copy of the network, counted inside the budget) gives seconds per
image; nimg_per_epoch is the whole set, or the largest multiple of the batch with which the
default 500 epochs fit, and n_epochs is then as many epochs (training plus the validation
every 10th) as fit in the budget: 500 or more, fewer only when even one batch per epoch
is too slow for 500.
The validation loss (logged, not used to pick weights: Cellpose keeps the last epoch) is
computed on a fixed subset of 16 fluo_val images, so that nearly all the budget trains.
The actual training time is measured and reported; it can differ from the plan by the
calibration's error. Computing flows before training is timed apart (outside the budget,
like our target cache). The model (a Cellpose weights file) and train_summary.json go
outside the repo.
"""

import argparse
import copy
import math
import shutil
import sys
import time

import numpy as np
import peerdata

DEFAULTS = {"learning_rate": 0.2, "weight_decay": 1e-5, "momentum": 0.9, "SGD": True,
            "batch_size": 8, "bsize": 224, "min_train_masks": 5, "scale_range": 0.5}
DEFAULT_EPOCHS = 500         # cellpose CLI --n_epochs default
VAL_EVERY = 10               # train_seg evaluates the validation loss at epoch 5 and every 10th
VAL_IMAGES = 16              # ... on this many fluo_val images (a fixed subset: seed 42)
MODEL_NAME = "cellpose_dsb_fluo"


def parse_args(argv=None) -> argparse.Namespace:
    p = peerdata.training_parser("cellpose", __doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                   help="epochs when the budget cannot give every image every epoch")
    return p.parse_args(argv)


def prepare(x_train, y_train, x_val, y_val, net):
    """Cellpose's own preprocessing (flows, diameters, normalisation) done once, up front."""
    from cellpose import models, train

    out = train._process_train_test(
        train_data=x_train, train_labels=y_train, test_data=x_val, test_labels=y_val,
        min_train_masks=DEFAULTS["min_train_masks"], channels=[0, 0],
        normalize_params=dict(models.normalize_default), device=net.device)
    names = ("train_data", "train_labels", "train_files", "train_labels_files", "train_probs",
             "diam_train", "test_data", "test_labels", "test_files", "test_labels_files",
             "test_probs", "diam_test", "normed")
    return dict(zip(names, out))


def calibrate(net, prep: dict, n_batches: int = 3) -> dict:
    """Seconds per training image and per validation image, on a copy of the network."""
    import torch
    from cellpose import train, transforms

    probe = copy.deepcopy(net)
    optimizer = torch.optim.SGD(probe.parameters(), lr=DEFAULTS["learning_rate"],
                                momentum=DEFAULTS["momentum"],
                                weight_decay=DEFAULTS["weight_decay"])
    rng = np.random.default_rng(0)
    bs = DEFAULTS["batch_size"]

    def batch_seconds(data, labels, diams, training: bool) -> float:
        start = time.perf_counter()
        inds = rng.integers(len(data), size=bs)
        imgs, lbls = train._get_batch(inds, data=data, labels=labels)
        rsc = np.array([diams[i] for i in inds]) / probe.diam_mean.item()
        imgi, lbl = transforms.random_rotate_and_resize(
            imgs, Y=lbls, rescale=rsc, scale_range=DEFAULTS["scale_range"],
            xy=(DEFAULTS["bsize"], DEFAULTS["bsize"]))[:2]
        x = torch.from_numpy(imgi).to(net.device)
        probe.train(training)
        with torch.set_grad_enabled(training):
            loss = train._loss_fn_seg(lbl, probe(x)[0], net.device)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return time.perf_counter() - start

    train_args = (prep["train_data"], prep["train_labels"], prep["diam_train"])
    batch_seconds(*train_args, training=True)                       # warm-up
    t_train = np.median([batch_seconds(*train_args, training=True) for _ in range(n_batches)])
    t_val = 0.0
    if prep["test_data"] is not None:
        val_args = (prep["test_data"], prep["test_labels"], prep["diam_test"])
        t_val = np.median([batch_seconds(*val_args, training=False) for _ in range(n_batches)])
    return {"seconds_per_train_image": float(t_train / bs), "seconds_per_val_image": float(t_val / bs)}


def plan(budget_s: float, n_train: int, n_val: int, speed: dict, epochs: int) -> dict:
    """n_epochs and nimg_per_epoch that fill `budget_s` (see the module docstring)."""
    bs = DEFAULTS["batch_size"]
    t_img, t_val = speed["seconds_per_train_image"], speed["seconds_per_val_image"]

    def cost(n_epochs: int, per_epoch: int) -> float:
        batches = math.ceil(per_epoch / bs)
        n_validations = len({5} & set(range(n_epochs)) | set(range(0, n_epochs, VAL_EVERY)))
        return n_epochs * batches * bs * t_img + n_validations * n_val * t_val

    per_epoch = n_train                   # shrink epochs (by whole batches) until `epochs` fit
    while per_epoch > bs and cost(epochs, per_epoch) > budget_s:
        per_epoch -= bs if per_epoch % bs == 0 else per_epoch % bs
    n_epochs = max(1, int(budget_s // cost(1, per_epoch)))   # then as many epochs as fit
    while n_epochs > 1 and cost(n_epochs, per_epoch) > budget_s:
        n_epochs -= 1
    while cost(n_epochs + 1, per_epoch) <= budget_s:
        n_epochs += 1
    return {"n_epochs": n_epochs, "nimg_per_epoch": per_epoch,
            "planned_seconds": round(cost(n_epochs, per_epoch), 1)}


def train_model(args: argparse.Namespace) -> dict:
    import torch
    from cellpose import models, train

    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    watch = peerdata.Stopwatch()
    with watch("data"):
        train_ids, x_train, y_train = peerdata.load_split(args.data, peerdata.TRAIN_SPLIT, args.limit)
        val_ids, x_val, y_val = peerdata.load_split(args.data, peerdata.VAL_SPLIT, args.val_limit)
        diam_mean = round(peerdata.median_diameter(y_train), 2)
    print(f"data: {len(x_train)} train, {len(x_val)} val images; median diameter {diam_mean} px")
    model = models.CellposeModel(pretrained_model=False, model_type=None, diam_mean=diam_mean,
                                 nchan=2, device=torch.device("cpu"))
    with watch("flows"):
        prep = prepare(x_train, y_train, x_val, y_val, model.net)
    n_train = len(prep["train_data"])
    n_val = min(VAL_IMAGES, len(prep["test_data"] or []))
    print(f"flows and normalisation: {watch.seconds['flows']:.0f} s; {n_train} training images "
          f"with >= {DEFAULTS['min_train_masks']} objects")

    budget_s = 60.0 * args.minutes
    with watch("calibration"):
        speed = calibrate(model.net, prep)
    schedule = plan(budget_s - watch.seconds["calibration"], n_train, n_val, speed, args.epochs)
    print(f"calibration: {speed}; plan: {schedule}")

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    with watch("train"):
        weights, train_losses, val_losses = train.train_seg(
            model.net, train_data=prep["train_data"], train_labels=prep["train_labels"],
            test_data=prep["test_data"], test_labels=prep["test_labels"], normalize=False,
            learning_rate=DEFAULTS["learning_rate"], weight_decay=DEFAULTS["weight_decay"],
            momentum=DEFAULTS["momentum"], SGD=DEFAULTS["SGD"],
            batch_size=DEFAULTS["batch_size"], bsize=DEFAULTS["bsize"],
            min_train_masks=DEFAULTS["min_train_masks"], n_epochs=schedule["n_epochs"],
            nimg_per_epoch=schedule["nimg_per_epoch"], nimg_test_per_epoch=n_val or None,
            save_path=str(args.out),
            model_name=MODEL_NAME)
    train_seconds = watch.seconds["train"] + watch.seconds["calibration"]
    return {
        "peer": "cellpose", "model_dir": args.out, "weights": str(weights),
        "budget_minutes": args.minutes, "train_seconds": round(train_seconds, 2),
        "planned": schedule, "calibration": speed,
        "steps": schedule["n_epochs"] * math.ceil(schedule["nimg_per_epoch"] / DEFAULTS["batch_size"]),
        "epochs_run": schedule["n_epochs"], "settings": DEFAULTS, "diam_mean": diam_mean,
        "diam_labels": float(model.net.diam_labels.item()),
        "final_train_loss": float(train_losses[-1]),
        "val_losses": {int(i): float(v) for i, v in enumerate(val_losses) if v},
        "n_train": len(train_ids), "n_train_used": n_train, "n_val": len(val_ids),
        "seconds": watch.seconds, "versions": versions(), "machine": peerdata.machine(),
        "command": sys.argv,
    }


def versions() -> dict:
    from importlib.metadata import version

    import torch

    return {"cellpose": version("cellpose"), "torch": torch.__version__, "numpy": np.__version__}


def main(argv=None) -> None:
    args = parse_args(argv)
    summary_path = args.out / "train_summary.json"
    if peerdata.already_trained(summary_path, args.minutes, args.force):
        return
    from cellpose import io

    io.logger_setup()   # cellpose's training log (epochs, losses, learning rate) on stdout
    summary = train_model(args)
    peerdata.write_json(summary_path, summary)
    print(f"cellpose: budget {args.minutes:g} min, trained {summary['train_seconds'] / 60:.2f} min "
          f"(calibration included), {summary['epochs_run']} epochs x "
          f"{summary['planned']['nimg_per_epoch']} images = {summary['steps']} steps; "
          f"diam_mean {summary['diam_mean']} px; model {summary['weights']}")


if __name__ == "__main__":
    main()
