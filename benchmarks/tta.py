"""Gain and cost of test-time augmentation (`--tta`) on a labelled split (issue 12, item 4).

Each image is segmented by `segment_array` with the default settings (automatic size,
default precision) without and with `tta`, one after the other image by image, after one
warm-up image each, with the same loaded model. Prints, with the CPU: pooled AP@0.5,
AP@0.75 and AP@0.5:0.95 against the ground truth and the seconds spent in the network
(size probes included) and in all, for each.

    python benchmarks/tta.py --images ../shared/data/dsb2018/train/images \
        --masks ../shared/data/dsb2018/train/masks --ids ../shared/data/dsb2018/splits/fluo_val.txt
"""

import time

import numpy as np
import tifffile

from cellvit_cli import metrics
from cellvit_cli.inference import SegmentSettings, Segmenter, segment_array
from cellvit_cli.io import read_labels
from cellvit_cli.modeling import load_model_folder
from precision import pooled
from splits import compare_on_split

RUNS = {"plain": False, "tta": True}


def run_pairs(pairs, model=None, device: str = "cpu") -> dict:
    """{'truth': [labels], run: {'labels': [...], 'network_s': .., 'seconds': ..}}."""
    loaded = load_model_folder(model)
    segmenters = {name: Segmenter(loaded, SegmentSettings(tta=tta, device=device, progress=False))
                  for name, tta in RUNS.items()}
    warm_up = tifffile.imread(pairs[0][0])
    runs = {}
    for name, segmenter in segmenters.items():
        segment_array(warm_up, segmenter)
        segmenter.predictor.seconds = segmenter.probe_predictor.seconds = 0.0
        runs[name] = {"labels": [], "seconds": 0.0}
    truth = []
    for image_path, mask_path in pairs:
        image = tifffile.imread(image_path)
        truth.append(read_labels(mask_path))
        for name, segmenter in segmenters.items():
            start = time.perf_counter()
            runs[name]["labels"].append(segment_array(image, segmenter))
            runs[name]["seconds"] += time.perf_counter() - start
    for name, segmenter in segmenters.items():
        runs[name]["network_s"] = segmenter.predictor.seconds + segmenter.probe_predictor.seconds
    return {"truth": truth, **runs}


def report(result: dict) -> list[str]:
    lines = ["| run | AP@0.5 | AP@0.75 | AP@0.5:0.95 | network s | total s |",
             "|---|---|---|---|---|---|"]
    for name in RUNS:
        ap = [s["ap"] for s in pooled(result["truth"], result[name]["labels"],
                                      metrics.DEFAULT_IOU_THRESHS)]
        lines.append(f"| {name} | {ap[0]:.4f} | {ap[5]:.4f} | {np.mean(ap):.4f} | "
                     f"{result[name]['network_s']:.1f} | {result[name]['seconds']:.1f} |")
    cost = result["tta"]["seconds"] / result["plain"]["seconds"]
    return lines + ["", f"total time tta / plain: {cost:.2f}x"]


def main() -> None:
    compare_on_split(__doc__.splitlines()[0], run_pairs, report)


if __name__ == "__main__":
    main()
