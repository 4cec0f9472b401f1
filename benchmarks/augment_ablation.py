"""Which parts of the robust recipe earn their place: the same short training with each
augmentation left out in turn (and with another normalisation), scored on a split and on
its harder copy (`robustness.py`: dim objects beside bright ones, a background ramp).

Every row trains `vit_tiny_p16_s2` with all three heads for --epochs (20: 9,760 crops of
128 px, issue 11's budget), seed 0, lr 5e-4, batch 8, without validation (the last epoch
is the model, no threshold tuning: the rows differ in training only), then
`accuracy.score_modes` scores it on both copies at zoom 1 with default thresholds. One line
per row as it finishes; a row whose model folder already holds a finished run is scored,
not trained again (a stopped benchmark continues).

    D=../shared/data/dsb2018
    python benchmarks/augment_ablation.py --images $D/train/images --masks $D/train/masks \
        --train-ids $D/splits/fluo_train.txt --ids $D/splits/fluo_val.txt -o /tmp/ablation
"""

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from accuracy import score_modes
from robustness import write_harder
from splits import add_split_arguments, split_pairs
from cellvit_cli.device import cpu_description
from cellvit_cli.settings import AUGMENTATIONS, AugmentConfig, TrainConfig, TrainRequest
from cellvit_cli.training.data import read_ids
from cellvit_cli.training.run import run_training

# row name: (changes to AUGMENTATIONS["robust"], changes to the TrainConfig)
ROWS = {
    "robust (all)": ({}, {}),
    "without per-object contrast": ({"object_gain_range": None}, {}),
    "without background ramps": ({"gradient_max": 0.0}, {}),
    "without crowded crops": ({"crowded_fraction": 0.0}, {}),
    "zoom 0.7-1.4 (standard's)": ({"scale_range": (0.7, 1.4)}, {}),
    "without blur, one noise level (sd 0.03)": ({"blur_sigma_max": 0.0, "noise_std_range": None}, {}),
    "robust, percentiles 1-99 (Cellpose's)": ({}, {"norm_percentiles": (1.0, 99.0)}),
    "standard (none of them)": (asdict(AUGMENTATIONS["standard"]), {}),
}
MODES = ("star", "flow", "boundary", "fused")


def row_config(name: str, epochs: int) -> TrainConfig:
    """The TrainConfig of row `name`."""
    augment_changes, train_changes = ROWS[name]
    augment = AugmentConfig(**{**asdict(AUGMENTATIONS["robust"]), **augment_changes})
    return TrainConfig(variant="vit_tiny_p16_s2", heads=("star", "flow", "boundary"),
                       epochs=epochs, batch_size=8, augment=augment, lr=5e-4, seed=0,
                       **train_changes)


def train_row(name: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Train row `name` into its folder under args.out (unless done); (folder, minutes)."""
    folder = args.out / name.split(" (")[0].replace(" ", "_").replace(",", "")
    if (folder / "train_summary.json").is_file():
        return folder, float("nan")
    request = TrainRequest(images=args.images, masks=args.masks, ids_file=args.train_ids,
                           out_dir=folder, cache_dir=args.cache_dir)
    start = time.perf_counter()
    run_training(request, row_config(name, args.epochs), overwrite=True, progress=False)
    return folder, (time.perf_counter() - start) / 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_arguments(parser)
    parser.add_argument("--train-ids", type=Path, required=True)
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder of the runs")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/cellvit_flow_cache"))
    args = parser.parse_args()
    ids = read_ids(args.ids) if args.ids else None
    hard = Path(tempfile.mkdtemp(prefix="harder_"))
    write_harder(split_pairs(args), hard)
    print(f"CPU: {cpu_description()}; {args.epochs} epochs per row")
    print("| row | train min | " + " | ".join(MODES) + " | harder: " + " | ".join(MODES)
          + " |\n|---|---|" + "---|" * 2 * len(MODES), flush=True)
    for name in args.rows:
        folder, minutes = train_row(name, args)
        plain, _ = score_modes(folder, args.images, args.masks, ids)
        harder, _ = score_modes(folder, hard, args.masks, ids)
        scores = {"plain": plain, "harder": harder, "train_minutes": minutes}
        (folder / "ablation.json").write_text(json.dumps(scores, indent=2, default=str))
        cells = [f"{copy[m]['ap_50']:.3f}" for copy in (plain, harder) for m in MODES]
        print(f"| {name} | {minutes:.1f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
