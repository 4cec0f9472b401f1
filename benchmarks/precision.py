"""bf16 against fp32 inference of one model on a labelled split (issue 11, item 2).

Each image is segmented by `segment_array` at zoom 1 (`scale=1.0`: the size estimate is
out of the comparison) in fp32 and in bf16, the two one after the other image by image
(after one warm-up image each), with the same loaded model. Prints, with the CPU
(`cpu_description`): F1, precision and recall at IoU 0.5 of the bf16 labels against the
fp32 labels, pooled over all objects (`metrics.match_counts` / `pool` / `scores`), and per
precision: AP@0.5, AP@0.75 and AP@0.5:0.95 against the ground truth (pooled) and the
seconds spent in the network (`Segmenter.predictor.seconds`). Issue 11's targets: F1 >=
0.98 and AP@0.5 within 0.005.

    python benchmarks/precision.py --images ../shared/data/dsb2018/test/images \
        --masks ../shared/data/dsb2018/test/masks --ids ../shared/data/dsb2018/splits/test_fluo.txt
"""


import numpy as np
import tifffile

from cellvit_cli import metrics
from cellvit_cli.inference import SegmentSettings, Segmenter, segment_array
from cellvit_cli.device import precision_name
from cellvit_cli.io import read_labels
from cellvit_cli.modeling import load_model_folder
from splits import compare_on_split

PRECISIONS = ("fp32", "bf16")


def run_pairs(pairs, model=None, device: str = "cpu") -> dict:
    """{'truth': [labels], precision: {'labels': [...], 'seconds': network s, 'dtype': name}}
    of every pair, the precisions interleaved image by image."""
    loaded = load_model_folder(model)
    segmenters = {p: Segmenter(loaded, SegmentSettings(scale=1.0, precision=p, device=device,
                                                       progress=False))
                  for p in PRECISIONS}
    warm_up = tifffile.imread(pairs[0][0])
    for segmenter in segmenters.values():
        segment_array(warm_up, segmenter)
        segmenter.predictor.seconds = 0.0
    runs = {p: {"labels": [], "dtype": precision_name(s.predictor.dtype)}
            for p, s in segmenters.items()}
    truth = []
    for image_path, mask_path in pairs:
        image = tifffile.imread(image_path)
        truth.append(read_labels(mask_path))
        for p, segmenter in segmenters.items():
            runs[p]["labels"].append(segment_array(image, segmenter))
    for p, segmenter in segmenters.items():
        runs[p]["seconds"] = segmenter.predictor.seconds
    return {"truth": truth, **runs}


def pooled(trues, preds, iou_threshs) -> list[dict[str, float]]:
    """Pooled scores at each threshold of `iou_threshs` of label pairs (true, pred)."""
    per_image = [metrics.match_counts(metrics.label_overlap(t, p), iou_threshs)
                 for t, p in zip(trues, preds)]
    return [metrics.scores(metrics.pool([counts[i] for counts in per_image]))
            for i in range(len(iou_threshs))]


def report(result: dict) -> list[str]:
    """Markdown lines: the agreement line, then one table row per precision."""
    fp32, bf16 = result["fp32"]["labels"], result["bf16"]["labels"]
    agree = pooled(fp32, bf16, [0.5])[0]
    n_objects = sum(int(np.unique(labels[labels > 0]).size) for labels in fp32)
    lines = [f"bf16 labels against fp32 labels ({n_objects} fp32 objects), IoU 0.5: "
             f"F1 {agree['f1']:.4f}, precision {agree['precision']:.4f}, "
             f"recall {agree['recall']:.4f}", "",
             "| precision | AP@0.5 | AP@0.75 | AP@0.5:0.95 | network s |",
             "|---|---|---|---|---|"]
    for p in PRECISIONS:
        ap = [s["ap"] for s in pooled(result["truth"], result[p]["labels"],
                                      metrics.DEFAULT_IOU_THRESHS)]
        lines.append(f"| {result[p]['dtype']} | {ap[0]:.4f} | {ap[5]:.4f} | "
                     f"{np.mean(ap):.4f} | {result[p]['seconds']:.1f} |")
    speedup = result["fp32"]["seconds"] / result["bf16"]["seconds"]
    lines += ["", f"network time fp32 / bf16: {speedup:.2f}x"]
    return lines


def main() -> None:
    compare_on_split(__doc__.splitlines()[0], run_pairs, report)


if __name__ == "__main__":
    main()
