"""Accuracy and speed of `segment` on zoomed copies of a labelled split, with the default
automatic object size and with the old default (zoom 1, no estimate).

Each image and its masks are zoomed by 0.5, 1, 2 and 4 (images bilinear, masks nearest),
written as TIFFs to a scratch folder and segmented by `segment_paths` exactly as
`cellvit segment` does (block mode for the big 4x images). Prints, per zoom and setting:
AP@0.5, AP@0.75, AP@0.5:0.95 (pooled, `cellvit_cli.metrics`), seconds per image (wall
time of the run / images) and the estimate's error (estimated / true median diameter of
the zoomed ground truth: median, and the share of images within 15 %).

    python benchmarks/zoom.py --images ../shared/data/dsb2018/test/images \
        --masks ../shared/data/dsb2018/test/masks --ids ../shared/data/dsb2018/splits/test_fluo.txt
    python benchmarks/zoom.py ... --cost     # the estimate's own cost, at zoom 1x only
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from cellvit_cli import metrics
from cellvit_cli.inference import SegmentSettings, segment_paths
from cellvit_cli.device import cpu_description
from cellvit_cli.inference.sizing import object_diameters
from cellvit_cli.io import read_labels
from splits import add_split_arguments, split_pairs

ZOOMS = (0.5, 1.0, 2.0, 4.0)
SETTINGS = {"auto": {}, "zoom 1": {"scale": 1.0}}  # the default, and the old default


def zoom_pair(image: np.ndarray, labels: np.ndarray, zoom: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) zoomed in Y and X: image bilinear (any trailing channel axis kept),
    labels nearest, to the same shape."""
    if zoom == 1:
        return image, labels
    factors = (zoom, zoom) + (1,) * (image.ndim - 2)
    zoomed = ndi.zoom(image.astype(np.float32), factors, order=1, grid_mode=True,
                      mode="grid-constant")
    shape = zoomed.shape[:2]
    label_zoom = (shape[0] / labels.shape[0], shape[1] / labels.shape[1])
    zoomed_labels = ndi.zoom(labels, label_zoom, order=0, grid_mode=True, mode="grid-constant")
    return np.clip(zoomed, 0, np.iinfo(image.dtype).max if image.dtype.kind in "ui" else None
                   ).astype(image.dtype), zoomed_labels[:shape[0], :shape[1]]


def write_set(pairs, zoom: float, folder: Path) -> dict[str, np.ndarray]:
    """Write the zoomed images to `folder`; {stem: zoomed ground truth}."""
    folder.mkdir(parents=True)
    truth = {}
    for image_path, mask_path in pairs:
        image, labels = zoom_pair(tifffile.imread(image_path), read_labels(mask_path), zoom)
        tifffile.imwrite(folder / image_path.name, image, compression="zlib")
        truth[image_path.stem] = labels
    return truth


def score_run(truth: dict[str, np.ndarray], out: Path, report) -> dict:
    """AP figures, seconds per image and the estimate's error of one segment run."""
    preds = [read_labels(out / f"{stem}_labels.tif") for stem in truth]
    pooled = metrics.pooled_scores(metrics.evaluate_pairs(zip(truth.values(), preds)))
    ap = {round(row["iou_thresh"], 2): row["ap"] for row in pooled}
    ratios = []
    for record in report.images:
        stem = Path(record.image).stem
        true = np.median(object_diameters(truth[stem])) if truth[stem].any() else None
        if record.diameter_px != "" and true:
            ratios.append(float(record.diameter_px) / true)
    ratios = np.array(ratios)
    return {"ap50": ap[0.5], "ap75": ap[0.75], "map": float(np.mean(list(ap.values()))),
            "s_per_image": report.seconds / len(truth),
            "ratio_median": float(np.median(ratios)) if ratios.size else float("nan"),
            "within_15": float(np.mean(np.abs(ratios - 1) <= 0.15)) if ratios.size else float("nan"),
            "zooms": [float(r.zoom) for r in report.images]}


def estimate_cost(pairs, model=None, precision: str = "auto", repeats: int = 2) -> dict:
    """Seconds of `segment_array_with_size` per image with the automatic size and with the
    zoom it found given by hand (no probes), interleaved image by image, best of
    `repeats`; their ratio is what the estimate costs."""
    import time

    from cellvit_cli.inference import Segmenter, segment_array_with_size

    auto = Segmenter.from_settings(SegmentSettings(model=model, precision=precision,
                                                   progress=False))
    totals = {"auto": 0.0, "same zoom": 0.0}
    for image_path, _ in pairs:
        image = tifffile.imread(image_path)
        image = np.moveaxis(image, -1, 0) if image.ndim == 3 else image
        zoom = segment_array_with_size(image, auto)[1].zoom  # warm-up, and the zoom found
        fixed = Segmenter(auto.loaded, SegmentSettings(scale=zoom, precision=precision,
                                                       progress=False))
        for name, segmenter in (("auto", auto), ("same zoom", fixed)):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                segment_array_with_size(image, segmenter)
                times.append(time.perf_counter() - start)
            totals[name] += min(times)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_arguments(parser)
    parser.add_argument("--model", default=None)
    parser.add_argument("--zooms", type=float, nargs="+", default=list(ZOOMS))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--cost", action="store_true",
                        help="only time the estimate against the same zoom given by hand")
    args = parser.parse_args()
    pairs = split_pairs(args)
    print(f"{len(pairs)} images; CPU: {cpu_description()}")
    if args.cost:
        totals = estimate_cost(pairs, args.model, args.precision)
        print(f"segment_array_with_size, s per image: auto {totals['auto'] / len(pairs):.3f}, "
              f"the same zoom given {totals['same zoom'] / len(pairs):.3f}: the estimate "
              f"costs {totals['auto'] / totals['same zoom']:.2f}x")
        return
    print("| zoom | setting | AP@0.5 | AP@0.75 | AP@0.5:0.95 | s/image | est/true diameter "
          "(median) | within 15 % | zooms used (median) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for zoom in args.zooms:
            folder = Path(scratch) / f"x{zoom}"
            truth = write_set(pairs, zoom, folder / "images")
            for name in args.settings:
                settings = SegmentSettings(model=args.model, progress=False,
                                           precision=args.precision, **SETTINGS[name])
                report = segment_paths([folder / "images"], folder / name, settings)
                r = score_run(truth, folder / name, report)
                estimate = (f"{r['ratio_median']:.3f} | {r['within_15']:.0%}" if name == "auto"
                            else "- | -")
                print(f"| {zoom:g}x | {name} | {r['ap50']:.3f} | {r['ap75']:.3f} | "
                      f"{r['map']:.3f} | {r['s_per_image']:.2f} | {estimate} | "
                      f"{np.median(r['zooms']):.3g} |", flush=True)


if __name__ == "__main__":
    main()
