"""GPU benchmark: segment throughput by batch size, training crops/s, peak GPU memory, one JSON.

Run through `benchmarks/gpu.sh` on a machine with a GPU (issue 11, item 4); on the CPU with
a tiny model it is a test of the script itself (tests/test_gpu_benchmark.py).

- segment: a folder of `--n-images` mosaics of real nuclei (the StarDist sample) of
  `--size`^2, `segment_paths` end to end (read, network, decode, write) at each batch size,
  at the model's own object size (zoom 1: the size estimate is timed by benchmarks/zoom.py),
  after a warm-up run; Mpx/s end to end and per stage, peak GPU memory of each run.
- train: full training steps (forward, backward, AdamW) on augmented crops, in the
  precision `cellvit train` uses on that device (autocast on CUDA), crops/s and peak memory.

    python benchmarks/gpu.py --out gpu.json --batch-sizes 8,16,32,64
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from cellvit_cli.device import cpu_description, resolve_device
from cellvit_cli.inference.pipeline import SegmentSettings, Segmenter, segment_paths
from cellvit_cli.training.augment import AugmentConfig
from cellvit_cli.training.loop import TrainConfig

sys.path.insert(0, str(Path(__file__).parent))
from segment_speed import STAGES, load_model, write_images  # noqa: E402
from train_speed import crops_per_second, sample  # noqa: E402


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 3) if device.type == "cuda" else None


def segment_row(paths, out: Path, loaded, batch_size: int, args, device) -> dict:
    """One timed `segment_paths` run at `batch_size` (after a warm-up on the first image)."""
    settings = SegmentSettings(batch_size=batch_size, device=args.device, precision=args.precision,
                               diameter=loaded.config.median_diameter, overwrite=True,
                               progress=False)
    segmenter = Segmenter(loaded, settings)
    segment_paths(paths[:1], out / "warmup", settings, segmenter)
    reset_peak(device)
    report = segment_paths(paths, out / f"b{batch_size}", settings, segmenter)
    mpx = report.pixels / 1e6
    row = {"batch_size": batch_size, "images": report.done, "mpx": round(mpx, 2),
           "seconds": round(report.seconds, 2), "mpx_per_s": round(mpx / report.seconds, 3),
           "cells": report.cells, "peak_gpu_gib": peak_gib(device)}
    for stage in STAGES:
        seconds = report.stage_seconds.get(stage, 0.0)
        row[f"{stage}_mpx_per_s"] = round(mpx / seconds, 2) if seconds else None
    return row


def train_row(args, device) -> dict:
    """Training crops/s of `args.variant` with batch `args.train_batch` on real crops, at
    the precision `cellvit train` uses by default there (mixed on CUDA)."""
    cfg = TrainConfig(variant=args.variant, batch_size=args.train_batch,
                      augment=AugmentConfig(crop_size=args.crop_size))
    reset_peak(device)
    start = time.perf_counter()
    rate = crops_per_second(args.variant, device, cfg, args.train_steps, [sample()])
    return {"variant": args.variant, "batch_size": args.train_batch, "crop_size": args.crop_size,
            "steps": args.train_steps, "crops_per_s": round(rate, 1),
            "seconds": round(time.perf_counter() - start, 1), "peak_gpu_gib": peak_gib(device)}


def machine(device: torch.device, loaded, untrained: bool) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), "gpu": gpu, "cpu": cpu_description(),
            "python": platform.python_version(), "torch": torch.__version__,
            "model": str(loaded.path), "variant": loaded.config.variant, "untrained": untrained}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--model", default=None, help="model folder or name (default: shipped)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch-sizes", default="8,16,32,64")
    parser.add_argument("--variant", default="vit_tiny_p16", help="variant trained for crops/s")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--workdir", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_bench_"))
    paths = write_images(workdir / "images", args.n_images, args.size)
    loaded, untrained = load_model(args.model, str(device))
    result = {"machine": machine(device, loaded, untrained), "segment": [], "train": None}
    for batch_size in map(int, args.batch_sizes.split(",")):
        result["segment"].append(segment_row(paths, workdir / "out", loaded, batch_size, args,
                                             device))
        print(json.dumps(result["segment"][-1]), flush=True)
    result["train"] = train_row(args, device)
    print(json.dumps(result["train"]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
