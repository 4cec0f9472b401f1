"""What the automatic object size costs and how well it measures, for two ways of taking
the first probe: crops of big images (the default, `sizing.FIRST_PROBE_PIXELS`) against the
whole image at half size (the estimator before).

For each image of a folder with masks (e.g. mosaics of `fluo_val`:
`benchmarks/peers/mosaics.py OUT --split fluo_val`) or of a split zoomed by --zooms, both
strategies estimate the size with the same model, one after the other. Prints per
strategy: the estimate / true median diameter (median, share within 15 %), the zoom chosen
(and how often the two agree within `sizing.TOLERANCE`), the probes' network pixels per
pixel of the segmentation at that zoom (a probe of the whole image at the chosen zoom is the
segmentation and costs nothing extra), and the seconds of the estimate per image.

    python benchmarks/size_probes.py --model training_runs/nuclei_fluo_v2 \
        --images /tmp/val_mosaics/images --masks /tmp/val_mosaics/masks
    python benchmarks/size_probes.py --images $D/train/images --masks $D/train/masks \
        --ids $D/splits/fluo_val.txt --zooms 1 4
"""

import argparse
import math
import time
from contextlib import contextmanager

import numpy as np
import tifffile

from cellvit_cli.device import cpu_description
from cellvit_cli.inference import Segmenter, SegmentSettings
from cellvit_cli.inference import sizing
from cellvit_cli.io import read_labels
from splits import add_split_arguments, split_pairs
from zoom import zoom_pair

STRATEGIES = {"crops (default)": {},
              "whole at half size": {"FIRST_PROBE_PIXELS": math.inf,
                                     "FIRST_PROBE_SIDE": sizing.PROBE_SIDE}}


@contextmanager
def strategy(overrides: dict):
    """`sizing`'s constants set to `overrides` inside the block."""
    saved = {name: getattr(sizing, name) for name in overrides}
    for name, value in overrides.items():
        setattr(sizing, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(sizing, name, value)


def measure(segmenter: Segmenter, x: np.ndarray) -> dict:
    """One estimate of model input x (C, Y, X): zoom, diameter, probe pixels, seconds."""
    seen = []
    segment = segmenter.segment_input

    def counted(inp):
        seen.append(inp.shape[1] * inp.shape[2])
        return segment(inp)

    segmenter.segment_input = counted
    try:
        start = time.perf_counter()
        estimate = segmenter.estimate_array(x)
        seconds = time.perf_counter() - start
    finally:
        del segmenter.segment_input
    final = x.shape[1] * x.shape[2] * estimate.zoom ** 2
    extra = sum(seen) - (final if estimate.result is not None else 0)
    return {"zoom": estimate.zoom, "diameter": estimate.diameter, "seconds": seconds,
            "probe_share": extra / final}


def summarise(name: str, rows: list[dict], other: list[dict]) -> str:
    ratios = np.array([r["diameter"] / r["true"] for r in rows if r["diameter"]])
    agree = np.mean([abs(math.log(a["zoom"] / b["zoom"])) <= math.log1p(sizing.TOLERANCE)
                     for a, b in zip(rows, other)])
    return (f"| {name} | {np.median(ratios):.3f} | {np.mean(np.abs(ratios - 1) <= 0.15):.2f} | "
            f"{agree:.2f} | {np.mean([r['probe_share'] for r in rows]):.3f} | "
            f"{np.mean([r['seconds'] for r in rows]):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_arguments(parser)
    parser.add_argument("--model", default=None)
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.0])
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    segmenter = Segmenter.from_settings(SegmentSettings(model=args.model, progress=False,
                                                        precision=args.precision))
    print(f"CPU: {cpu_description()}; model {segmenter.loaded.path}")
    for zoom in args.zooms:
        results = {name: [] for name in STRATEGIES}
        for image_path, mask_path in split_pairs(args):
            image, labels = zoom_pair(tifffile.imread(image_path), read_labels(mask_path), zoom)
            data = np.moveaxis(image, -1, 0) if image.ndim == 3 else image[np.newaxis]
            x = segmenter.prepare(data)
            true = float(np.median(sizing.object_diameters(labels)))
            for name, overrides in STRATEGIES.items():
                with strategy(overrides):
                    results[name].append({**measure(segmenter, x), "true": true})
        names = list(results)
        print(f"\nzoom {zoom:g}, {len(results[names[0]])} images\n"
              "| first probe | estimate / true (median) | within 15 % | same zoom as the "
              "other | probe px per segmented px | estimate s/img |\n|---|---|---|---|---|---|")
        for name, other in zip(names, names[::-1]):
            print(summarise(name, results[name], results[other]))


if __name__ == "__main__":
    main()
