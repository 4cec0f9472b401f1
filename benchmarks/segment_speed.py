"""Speed of `cellvit segment` on a folder of 1024 x 1024 images: end to end and per stage.

Writes N mosaics of real nuclei (the StarDist sample, flipped/rotated copies), then runs
`segment_paths` with batch size 1 and with pooled batches (tiles of several images per
batch) and prints Mpx/s end to end and per stage (read, network, decode, write), where a
stage's figure is pixels / seconds spent in it (summed over threads: stages overlap).

    python benchmarks/segment_speed.py --n-images 6 --batch-sizes 1,8
    python benchmarks/segment_speed.py --model models/nuclei_fluo_tiny --device cuda
"""

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import tifffile
import torch

from cellvit_cli.inference.pipeline import SegmentSettings, Segmenter, segment_paths
from cellvit_cli.samples import load_nuclei_sample, make_mosaic

STAGES = ("read", "network", "decode", "write")


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


def run(paths, out: Path, settings: SegmentSettings, loaded) -> dict:
    segmenter = Segmenter(loaded, settings)
    segment_paths(paths[:1], out / "warmup", settings, segmenter)  # first-call costs
    segmenter.predictor.seconds = 0.0
    report = segment_paths(paths, out / f"b{settings.batch_size}", settings, segmenter)
    mpx = report.pixels / 1e6
    row = {"batch_size": settings.batch_size, "images": report.done, "mpx": round(mpx, 2),
           "seconds": round(report.seconds, 2), "mpx_per_s": round(mpx / report.seconds, 3),
           "cells": report.cells, "mode": segmenter.mode}
    for stage in STAGES:
        seconds = report.stage_seconds.get(stage, 0.0)
        row[f"{stage}_s"] = round(seconds, 2)
        row[f"{stage}_mpx_per_s"] = round(mpx / seconds, 2) if seconds else None
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--n-images", type=int, default=6)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="segment_speed_"))
    paths = write_images(workdir / "images", args.n_images, args.size)
    from cellvit_cli.device import resolve_device

    loaded, untrained = load_model(args.model, str(resolve_device(args.device)))
    rows = []
    for batch_size in map(int, args.batch_sizes.split(",")):
        settings = SegmentSettings(batch_size=batch_size, tile_size=args.tile_size,
                                   overlap=args.overlap, device=args.device, mode=args.mode,
                                   overwrite=True, progress=False)
        rows.append(run(paths, workdir / "out", settings, loaded))
        print(json.dumps(rows[-1]))
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "torch_threads": torch.get_num_threads(),
               "device": str(resolve_device(args.device)),
               "torch": torch.__version__, "model": str(loaded.path), "untrained": untrained}
    print(json.dumps({"machine": machine}))
    base = rows[0]["mpx_per_s"]
    for row in rows:
        print(f"batch {row['batch_size']:>2}: {row['mpx_per_s']:.3f} Mpx/s end to end "
              f"({row['images']} x {args.size}^2 in {row['seconds']:.1f} s; ratio to batch "
              f"{rows[0]['batch_size']}: {row['mpx_per_s'] / base:.2f}); per stage Mpx/s: "
              + ", ".join(f"{s} {row[f'{s}_mpx_per_s']}" for s in STAGES))
    (workdir / "results.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
