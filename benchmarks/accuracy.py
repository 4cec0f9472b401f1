"""Accuracy of a model on a labelled split, for every decoding mode it allows.

Each image goes through the network once (tiled and stitched as `cellvit segment` does);
its maps are decoded by every mode with the model's tuned thresholds and scored against
the raw ground truth with `cellvit_cli.metrics` (DSB-style AP = TP / (TP + FP + FN)).

    python benchmarks/accuracy.py --model models/nuclei_fluo_v2 \
        --images ../shared/data/dsb2018/test/images --masks ../shared/data/dsb2018/test/masks \
        --ids ../shared/data/dsb2018/splits/test_fluo.txt --name test_fluo --record
"""

import argparse
import json
import time
from pathlib import Path

from cellvit_cli import metrics
from cellvit_cli.evaluation import Evaluation, Pairing, headline
from cellvit_cli.inference import resolve_device
from cellvit_cli.io import read_image, read_labels
from cellvit_cli.modeling import load_model_folder
from cellvit_cli.modeling.folder import SCORES_FILE
from cellvit_cli.postprocess import available_modes, decode
from cellvit_cli.preprocess import prepare
from cellvit_cli.training.data import Sample, pair_files, read_ids
from cellvit_cli.training.validate import validation_maps
from splits import add_split_arguments


def score_modes(model_dir, images: Path, masks: Path, ids: list[str] | None, device: str = "auto"
                ) -> tuple[dict[str, dict], dict[str, float]]:
    """{mode: headline figures} and the seconds spent in the network and in each mode."""
    device = resolve_device(device)
    loaded = load_model_folder(model_dir, device)
    samples = [Sample(i.stem, prepare(read_image(i).data, loaded.config.in_channels), read_labels(m))
               for i, m in pair_files(images, masks, ids)]
    start = time.perf_counter()
    maps = validation_maps(loaded.model, samples, device)
    seconds = {"network": time.perf_counter() - start}
    results = {}
    for mode in available_modes(loaded.config.heads):
        start = time.perf_counter()
        preds = [decode(m, mode, loaded.thresholds) for m in maps]
        seconds[mode] = time.perf_counter() - start
        result = metrics.evaluate_pairs(zip((s.labels for s in samples), preds))
        results[mode] = headline(Evaluation(Pairing(), result))
    return results, seconds


def record(model_dir: Path, name: str, results: dict) -> None:
    """Merge {mode: {ap50, ap75, map, f1_50, pq_50, aji}} for data set `name` into scores.json."""
    path = Path(model_dir) / SCORES_FILE
    scores = json.loads(path.read_text()) if path.is_file() else {}
    scores[name] = {mode: {"ap50": r["ap_50"], "ap75": r["ap_75"], "map": r["mean_ap"],
                           "f1_50": r["f1_50"], "pq_50": r["pq_50"], "aji": r["aji"]}
                    for mode, r in results.items()}
    path.write_text(json.dumps(scores, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder or shipped name")
    add_split_arguments(parser)
    parser.add_argument("--name", default="data", help="name of the split, e.g. test_fluo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--record", action="store_true", help="write into the model's scores.json")
    args = parser.parse_args()
    ids = read_ids(args.ids) if args.ids else None
    results, seconds = score_modes(args.model, args.images, args.masks, ids, args.device)
    print(f"{args.name}: {len(ids) if ids else 'all'} images; network {seconds['network']:.1f} s")
    print("| mode | AP@0.5 | AP@0.75 | AP@0.5:0.95 | F1@0.5 | PQ@0.5 | AJI | decode s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['ap_50']:.3f} | {r['ap_75']:.3f} | {r['mean_ap']:.3f} | "
              f"{r['f1_50']:.3f} | {r['pq_50']:.3f} | {r['aji']:.3f} | {seconds[mode]:.1f} |")
    if args.record:
        from cellvit_cli.modeling import resolve_model
        record(resolve_model(args.model), args.name, results)


if __name__ == "__main__":
    main()
