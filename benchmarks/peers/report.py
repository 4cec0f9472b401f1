"""Markdown tables of a run_all.sh run: accuracy, speed and ratios of cellvit vs each peer.

    python benchmarks/peers/report.py RUN_DIR [-o RUN_DIR/report.md]

RUN_DIR holds what run_all.sh writes:
    eval/<method>/<set>/summary.json     `cellvit evaluate` of that method's labels
    pred/<method>/<set>/timing.json      peers: per-image times (predict.py)
    pred/<method>/<set>/wall_seconds.txt the whole command's wall time (all methods)
    logs/cellvit_<set>.log               cellvit segment's output ("... in X s")
    train/<method>.json                  the peers' train_summary.json
and --cellvit-model names cellvit's model folder (its train_config.json and train_log.csv,
when it has them, give cellvit's row of the training table). With --gt (test_fluo's masks)
a last table splits test_fluo by the median object diameter of each image's ground truth.
Two speeds: "s/img" = (model load + every image: read, network, post-processing, write) / n,
as each tool measures it inside its process; "wall s/img" = the whole command (interpreter
start, imports, model load, images) / n, measured by run_all.sh around the command.
"""

import argparse
import csv
import json
import re
from pathlib import Path

from cellvit_cli import metrics

METHODS = ("cellvit", "stardist", "cellpose")
PEERS = ("stardist", "cellpose")
SETS = ("test_fluo", "mosaics")
HEADLINE = (("ap_50", "AP@0.5"), ("ap_75", "AP@0.75"), ("mean_ap", "mean AP 0.5:0.95"),
            ("f1_50", "F1@0.5"), ("pq_50", "PQ@0.5"))
SIZE_BINS = ((0, 15, "< 15 px"), (15, 30, "15-30 px"), (30, float("inf"), ">= 30 px"))
CELLVIT_SUMMARY = re.compile(r"segment: (\d+) image\(s\) done.* in ([\d.]+) s")


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def scores(run: Path, method: str, name: str) -> dict | None:
    """Headline scores and speeds of one method on one image set, or None if not there."""
    summary = read_json(run / "eval" / method / name / "summary.json")
    if summary is None:
        return None
    row = {key: summary["headline"].get(key) for key, _ in HEADLINE}
    row["n_images"] = n = summary["n_images"]
    wall = run / "pred" / method / name / "wall_seconds.txt"
    row["wall_s"] = float(wall.read_text()) / n if wall.is_file() else None
    row["s"] = in_process_seconds(run, method, name)
    if row["s"] is not None:
        row["s"] /= n
    return row


def in_process_seconds(run: Path, method: str, name: str) -> float | None:
    if method == "cellvit":
        log = run / "logs" / f"cellvit_{name}.log"
        match = CELLVIT_SUMMARY.search(log.read_text()) if log.is_file() else None
        return float(match.group(2)) if match else None
    timing = read_json(run / "pred" / method / name / "timing.json")
    return timing["load_seconds"] + timing["images_seconds"] if timing else None


def fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio(a, b) -> str:
    return "n/a" if a is None or b in (None, 0) else f"{a / b:.2f}"


def results_table(rows: dict[str, dict]) -> list[str]:
    head = ["method"] + [label for _, label in HEADLINE] + ["s/img", "wall s/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in rows.items():
        cells = [method] + [fmt(row[key]) for key, _ in HEADLINE]
        cells += [fmt(row["s"], 2), fmt(row["wall_s"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ratios_table(rows: dict[str, dict]) -> list[str]:
    """cellvit / peer for the scores; peer / cellvit for time (above 1: cellvit is faster)."""
    ours = rows.get("cellvit")
    head = ["cellvit vs", "AP@0.5 ratio", "mean AP ratio", "PQ ratio", "speed-up (s/img)",
            "speed-up (wall)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer in PEERS:
        theirs = rows.get(peer)
        if ours is None or theirs is None:
            continue
        lines.append("| " + " | ".join([
            peer, ratio(ours["ap_50"], theirs["ap_50"]), ratio(ours["mean_ap"], theirs["mean_ap"]),
            ratio(ours["pq_50"], theirs["pq_50"]), ratio(theirs["s"], ours["s"]),
            ratio(theirs["wall_s"], ours["wall_s"])]) + " |")
    return lines


def cellvit_training(model_dir: Path | None) -> dict | None:
    """Budget, minutes, steps and epochs of a cellvit model folder's training, if recorded."""
    if model_dir is None:
        return None
    config = read_json(model_dir / "train_config.json")
    log = model_dir / "train_log.csv"
    if config is None or not log.is_file():
        return None
    rows = list(csv.DictReader(log.open()))
    return {"budget_minutes": config["config"].get("time_budget") or float("nan"),
            "train_seconds": sum(float(r["seconds"]) for r in rows),
            "steps": int(rows[-1]["step"]) if rows else 0, "epochs_run": len(rows)}


def training_table(run: Path, cellvit_model: Path | None,
                   cellvit_cores: int | None = None) -> list[str]:
    """Budgets side by side; cores: those the training process was allowed to use."""
    head = ["method", "budget (min)", "trained (min)", "cores", "core-min", "steps", "epochs",
            "outside the budget"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in METHODS:
        t = (cellvit_training(cellvit_model) if method == "cellvit"
             else read_json(run / "train" / f"{method}.json"))
        if t is None:
            continue
        outside = ", ".join(f"{k} {v:.0f} s" for k, v in t.get("seconds", {}).items()
                            if k not in ("train", "calibration"))
        cores = (cellvit_cores if method == "cellvit"
                 else t.get("machine", {}).get("cpus_allowed"))
        minutes = t["train_seconds"] / 60
        lines.append("| " + " | ".join([
            method, f"{t['budget_minutes']:g}", fmt(minutes, 1), str(cores or "n/a"),
            fmt(minutes * cores if cores else None, 0), str(t.get("steps", "n/a")),
            str(t.get("epochs_run", "n/a")), outside]) + " |")
    return lines


def object_sizes(mask_path: Path) -> tuple[float, int]:
    """Median equivalent diameter (px) and number of the objects of one label image."""
    import numpy as np
    import tifffile

    areas = np.bincount(tifffile.imread(mask_path).ravel())[1:]
    areas = areas[areas > 0]
    return (float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else 0.0), areas.size


def size_table(run: Path, gt: Path, name: str = "test_fluo") -> list[str]:
    """Pooled AP@0.5 (as `cellvit evaluate` pools it) per method within bins of median size."""
    sizes = {p.stem: object_sizes(p) for p in sorted(gt.glob("*.tif"))}
    head = ["median object diameter", "images", "objects"] + list(METHODS)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    counts = {m: per_image_counts(run / "eval" / m / name / "per_image.csv") for m in METHODS}
    for low, high, label in SIZE_BINS:
        stems = {s for s, (d, _) in sizes.items() if low <= d < high}
        if not stems:
            continue
        cells = [label, str(len(stems)), str(sum(sizes[s][1] for s in stems))]
        for method in METHODS:
            binned = [c for s, c in counts[method].items() if s in stems]
            cells.append(fmt(metrics.scores(metrics.pool(binned))["ap"]) if binned else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def per_image_counts(path: Path, iou: float = 0.5) -> dict[str, "metrics.MatchCounts"]:
    """{image stem: its counts} at one IoU threshold of a per_image.csv."""
    if not path.is_file():
        return {}
    out = {}
    for row in csv.DictReader(path.open()):
        if abs(float(row["iou_thresh"]) - iou) < 1e-9:
            tp = int(row["tp"])
            out[Path(row["gt_file"]).stem] = metrics.MatchCounts(
                iou, int(row["n_true"]), int(row["n_pred"]), tp,
                float(row["mean_matched_iou"]) * tp)
    return out


def build_report(run: Path, cellvit_model: Path | None = None,
                 cellvit_cores: int | None = None, gt: Path | None = None) -> str:
    meta = read_json(run / "run.json") or {}
    out = ["# cellvit vs StarDist and Cellpose", ""]
    if meta:
        out += [(f"Run: {meta.get('started_utc', '?')} on {meta.get('machine', '?')}; "
                 f"training budget {meta.get('minutes', '?')} min each; cellvit model "
                 f"`{meta.get('cellvit_model', '?')}`."), ""]
    out += ["## Training", ""] + training_table(run, cellvit_model, cellvit_cores) + [""]
    for name in SETS:
        rows = {m: r for m in METHODS if (r := scores(run, m, name)) is not None}
        if not rows:
            continue
        n = next(iter(rows.values()))["n_images"]
        size = meta.get("mosaic_size", 2048)
        title = (f"DSB2018 test_fluo ({n} images, 256 to 1040 px a side)" if name == "test_fluo"
                 else f"{n} mosaic(s) of {size} x {size} px tiled from test_fluo images")
        out += [f"## {title}", ""] + results_table(rows) + [""]
        out += ratios_table(rows) + [""]
    if gt is not None and gt.is_dir():
        out += ["## test_fluo by object size (AP@0.5 pooled within each bin)", ""]
        out += size_table(run, gt) + [""]
    out.append("Scores: pooled over all objects (`cellvit evaluate` headline). s/img: model "
               "load plus every image end to end, inside the process; wall: the whole command. "
               "Speed-up: the peer's seconds over cellvit's.")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None, help="default RUN/report.md")
    p.add_argument("--cellvit-model", type=Path, default=None, help="cellvit's model folder")
    p.add_argument("--cellvit-cores", type=int, default=None,
                   help="cores cellvit's model was trained on (its folder does not record them)")
    p.add_argument("--gt", type=Path, default=None,
                   help="test_fluo's ground-truth masks, for the table by object size")
    args = p.parse_args(argv)
    text = build_report(args.run, args.cellvit_model, args.cellvit_cores, args.gt)
    out = args.out or args.run / "report.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
