"""Where two models' scores differ, image by image: AP@0.5 per image from two
`cellvit evaluate -o` reports of the same split, grouped by image shape (on the DSB2018
splits the shape tells the kind of image: e.g. the crowded strips of test_fluo are 519 x
161/162 and 520 x 348 px), with each image's objects and their median diameter.

    python benchmarks/per_image.py --reports report_old report_new --gt test_fluo/masks
"""

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from cellvit_cli.inference.sizing import object_diameters
from cellvit_cli.io import read_labels


def image_ap50(report: Path) -> dict[str, float]:
    """{image: AP at IoU 0.5} of a report's per_image.csv."""
    rows = csv.DictReader((report / "per_image.csv").open())
    return {r["image"]: float(r["ap"]) for r in rows if float(r["iou_thresh"]) == 0.5}


def describe(gt_file: Path) -> tuple[str, int, float]:
    """(shape 'Y x X', objects, median object diameter in px) of a ground-truth file."""
    labels = read_labels(gt_file)
    diameters = object_diameters(labels)
    return (f"{labels.shape[0]} x {labels.shape[1]}", int(labels.max()),
            float(np.median(diameters)) if len(diameters) else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, nargs=2, required=True)
    parser.add_argument("--gt", type=Path, required=True, help="the ground-truth folder")
    args = parser.parse_args()
    old, new = (image_ap50(r) for r in args.reports)
    groups = defaultdict(list)
    for path in sorted(args.gt.iterdir()):
        if path.stem in old and path.stem in new:
            shape, n, diameter = describe(path)
            groups[shape].append((path.stem, n, diameter, old[path.stem], new[path.stem]))
    print(f"AP@0.5 per image: {args.reports[0]} -> {args.reports[1]}")
    print("| shape | images | objects | median diameter px | AP@0.5 (mean over images) | "
          "images below 0.5 |\n|---|---|---|---|---|---|")
    for shape, rows in sorted(groups.items(), key=lambda g: -len(g[1])):
        n, d, a, b = (np.array([r[k] for r in rows]) for k in (1, 2, 3, 4))
        print(f"| {shape} | {len(rows)} | {n.sum()} | {np.median(d):.0f} | {a.mean():.3f} -> "
              f"{b.mean():.3f} | {(a < 0.5).sum()} -> {(b < 0.5).sum()} |")
    every = [r for rows in groups.values() for r in rows]
    a, b = np.array([r[3] for r in every]), np.array([r[4] for r in every])
    print(f"\nall {len(every)} images: median AP@0.5 {np.median(a):.3f} -> {np.median(b):.3f}, "
          f"below 0.5: {(a < 0.5).sum()} -> {(b < 0.5).sum()}")
    print("\nthe 8 largest changes:\n| image | shape | objects | diameter | old | new |\n"
          "|---|---|---|---|---|---|")
    shapes = {r[0]: s for s, rows in groups.items() for r in rows}
    for stem, n, d, x, y in sorted(every, key=lambda r: -abs(r[4] - r[3]))[:8]:
        print(f"| {stem[:10]} | {shapes[stem]} | {n} | {d:.0f} | {x:.3f} | {y:.3f} |")


if __name__ == "__main__":
    main()
