"""Speed of `cellvit segment` on a folder of images: end to end and per stage.

Writes N mosaics of real nuclei (the StarDist sample, flipped/rotated copies), or takes a
folder of images (--images, e.g. the 2048 x 2048 mosaics of benchmarks/peers/mosaics.py),
then runs `segment_paths` (the engine of `cellvit segment`) once per setting: batch size,
precision, torch threads and decoder threads (`SegmentSettings.workers`). One image
(--warmup, default the first) is segmented first and not timed. Prints s per image and
Mpx/s end to end, and the seconds of each stage the pipeline reports (read, size,
network, decode, write; summed over threads: reading and decoding overlap the network, so
they do not add up to the end-to-end time), with the network time of the size probes
apart and the read stage split into reading the file and normalising it (timed alone,
one image after the other, before the runs).

    python benchmarks/segment_speed.py --n-images 6 --batch-sizes 1,8
    python benchmarks/segment_speed.py --model MODEL --images DIR --precisions fp32,bf16 \\
        --threads 2:1,1:1,2:2 --repeats 2
"""

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import tifffile
import torch

from cellvit_cli.device import cpu_description
from cellvit_cli.inference.pipeline import SegmentSettings, Segmenter, segment_paths
from cellvit_cli.io import read_image
from cellvit_cli.samples import load_nuclei_sample, make_mosaic

STAGES = ("read", "size", "network", "decode", "write")


def write_images(folder: Path, n: int, size: int) -> list[Path]:
    image, labels = load_nuclei_sample()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"mosaic_{i:02d}.tif"
        tifffile.imwrite(path, make_mosaic(image, labels, (size, size), seed=i)[0])
        paths.append(path)
    return paths


def load_model(name: str | None, device: str):
    """The model folder (or shipped name); an untrained ViT-tiny if none is given or found."""
    from cellvit_cli.modeling import LoadedModel, ModelConfig, load_model_folder
    from cellvit_cli.modeling.folder import ModelFolderError

    try:
        return load_model_folder(name, device), False
    except ModelFolderError as err:
        if name is not None:
            raise
        print(f"note: {err}; timing an UNTRAINED vit_tiny_p16 (decoding time is not "
              "representative of a trained model)")
    torch.manual_seed(0)
    config = ModelConfig(variant="vit_tiny_p16", heads=("star", "flow", "boundary"))
    return LoadedModel(config.build().eval(), config, {"default_mode": "star"}, Path("-")), True


def read_and_normalise_seconds(paths, segmenter: Segmenter) -> dict:
    """Seconds per image of reading the file and of normalising it (`Segmenter.prepare`),
    each timed alone: the two parts of the pipeline's read stage."""
    read = normalise = 0.0
    for path in paths:
        start = time.perf_counter()
        image = read_image(path)
        middle = time.perf_counter()
        segmenter.prepare(image.data)
        read, normalise = read + middle - start, normalise + time.perf_counter() - middle
    return {"file_s": round(read / len(paths), 3), "normalise_s": round(normalise / len(paths), 3)}


def run(paths, warmup: Path, out: Path, settings: SegmentSettings, loaded) -> dict:
    """One timed `segment_paths` over `paths` after an untimed one over `warmup`: the end
    to end and per-stage seconds per image (and Mpx/s) of that setting."""
    segmenter = Segmenter(loaded, settings)
    segment_paths([warmup], out / "warmup", settings, segmenter)  # first-call costs
    segmenter.predictor.seconds = segmenter.probe_predictor.seconds = 0.0
    report = segment_paths(paths, out / "timed", settings, segmenter)
    n, mpx = report.done, report.pixels / 1e6
    row = {"batch_size": settings.batch_size, "precision": settings.precision,
           "scale": settings.scale or "auto",
           "images": n, "mpx": round(mpx, 2), "seconds": round(report.seconds, 2),
           "s_per_image": round(report.seconds / n, 3),
           "mpx_per_s": round(mpx / report.seconds, 3), "cells": report.cells,
           "mode": segmenter.mode,
           "probe_network_s": round(segmenter.probe_predictor.seconds / n, 3)}
    for stage in STAGES:
        seconds = report.stage_seconds.get(stage, 0.0)
        row[f"{stage}_s"] = round(seconds / n, 3)
        row[f"{stage}_mpx_per_s"] = round(mpx / seconds, 2) if seconds else None
    return row


def parse_threads(text: str) -> list[tuple[int, int | None]]:
    """'2:1,1:1' -> [(torch threads, decoder threads), ...]; 'T:' leaves the decoders at
    the pipeline's default."""
    pairs = []
    for item in text.split(","):
        torch_threads, _, workers = item.partition(":")
        pairs.append((int(torch_threads), int(workers) if workers else None))
    return pairs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--images", type=Path, default=None,
                        help="a folder of TIFF images to time (default: write mosaics)")
    parser.add_argument("--warmup", type=Path, default=None,
                        help="the untimed first image (default: the first image)")
    parser.add_argument("--n-images", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--precisions", default="auto", help="comma list of auto, fp32, bf16")
    parser.add_argument("--threads", default=f"{torch.get_num_threads()}:",
                        help="comma list of TORCH:DECODERS thread counts (DECODERS empty: "
                             "the pipeline's default)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each setting")
    parser.add_argument("--scale", type=float, default=None,
                        help="a fixed zoom (default: the object size estimated per image)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--workdir", type=Path, default=None)
    return parser.parse_args()


def settings_grid(args) -> list[tuple[int, SegmentSettings]]:
    """(torch threads, settings) of every combination asked for."""
    grid = itertools.product(map(int, args.batch_sizes.split(",")), args.precisions.split(","),
                             parse_threads(args.threads))
    return [(threads, SegmentSettings(batch_size=batch, precision=precision, workers=workers,
                                      scale=args.scale, tile_size=args.tile_size,
                                      overlap=args.overlap,
                                      device=args.device, mode=args.mode, overwrite=True,
                                      progress=False))
            for batch, precision, (threads, workers) in grid]


def main() -> None:
    args = parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="segment_speed_"))
    paths = (sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
             if args.images else write_images(workdir / "images", args.n_images, args.size))
    from cellvit_cli.device import resolve_device

    device = str(resolve_device(args.device))
    loaded, untrained = load_model(args.model, device)
    parts = read_and_normalise_seconds(paths, Segmenter(loaded, SegmentSettings(device=device)))
    machine = {"cpu": cpu_description(), "device": device, "torch": torch.__version__,
               "model": str(loaded.path), "untrained": untrained,
               "images": [p.name for p in paths], "read_stage_parts_per_image": parts}
    print(json.dumps({"machine": machine}))
    rows = []
    for threads, settings in settings_grid(args):
        torch.set_num_threads(threads)
        for repeat in range(args.repeats):
            row = {"torch_threads": threads, "decoder_threads": settings.workers or "default",
                   "repeat": repeat + 1,
                   **run(paths, args.warmup or paths[0], workdir / "out", settings, loaded)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows)
    (workdir / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


def print_table(rows: list[dict]) -> None:
    """One markdown row per setting: the median over its repeats (and their range)."""
    print("| batch | precision | torch threads | decoder threads | s/img (range) | Mpx/s | "
          + " | ".join(f"{s} s/img" for s in STAGES) + " | probes network s/img |")
    print("|" + "---|" * (7 + len(STAGES)))
    key = ("batch_size", "precision", "torch_threads", "decoder_threads")
    for setting, group in itertools.groupby(rows, key=lambda r: tuple(r[k] for k in key)):
        group = list(group)
        times = [r["s_per_image"] for r in group]
        med = {k: statistics.median(r[k] for r in group)
               for k in ("mpx_per_s", "probe_network_s", *(f"{s}_s" for s in STAGES))}
        print("| " + " | ".join(map(str, setting))
              + f" | {statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f}) | "
              + f"{med['mpx_per_s']:.3f} | "
              + " | ".join(f"{med[f'{s}_s']:.2f}" for s in STAGES)
              + f" | {med['probe_network_s']:.2f} |")


if __name__ == "__main__":
    main()
