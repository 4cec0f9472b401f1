"""Block mode on a big mosaic of real nuclei: wall time and peak memory of `cellvit segment`.

Writes a SIZE x SIZE mosaic of the StarDist nuclei sample (tiled, zlib; streamed, so
writing it needs little memory), then runs `cellvit segment` on it in a child process and
reports the child's wall time and peak resident memory (ru_maxrss), and checks the labels
file (tiled BigTIFF, shape, number of cells).

    python benchmarks/big_image.py --size 16384
    python benchmarks/big_image.py --size 4096 --extra --block-mode on
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from cellvit_cli.bigtiff import TiffRegionReader
from cellvit_cli.samples import write_mosaic_tiffs

RSS_LIMIT_GB = 3.0


def model_folder(name: str | None, workdir: Path) -> tuple[str, bool]:
    """The model to use; an untrained ViT-tiny folder when no model is given or shipped."""
    from cellvit_cli.modeling import ModelConfig, resolve_model, save_model_folder
    from cellvit_cli.modeling.folder import ModelFolderError

    try:
        return str(resolve_model(name)), False
    except ModelFolderError as err:
        if name is not None:
            raise
        print(f"note: {err}; using an UNTRAINED vit_tiny_p16", flush=True)
    torch.manual_seed(0)
    config = ModelConfig(variant="vit_tiny_p16", heads=("star", "flow", "boundary"))
    folder = save_model_folder(workdir / "untrained", config.build(), config,
                               {"default_mode": "star"})
    return str(folder), True


def run_child(command: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in GB, exit code) of `command`."""
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss / 1024 ** 2, os.waitstatus_to_exitcode(status)


def check_labels(path: Path) -> dict:
    """Layout of the labels file and its largest label, read one band of rows at a time."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        layout = {"bigtiff": tif.is_bigtiff, "tiled": page.is_tiled, "dtype": str(page.dtype),
                  "shape": list(page.shape)}
    largest = 0
    with TiffRegionReader(path) as reader:
        _, n_y, n_x = reader.shape
        for y in range(0, n_y, 1024):
            largest = max(largest, int(reader.read(slice(y, y + 1024), slice(0, n_x)).max()))
    return {**layout, "max_label": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--model", default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further `cellvit segment` options, e.g. --scale 0.25")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="big_image_"))
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"mosaic_{args.size}.tif"
    if not image.exists():
        start = time.perf_counter()
        write_mosaic_tiffs(image, workdir / f"mosaic_{args.size}_truth.tif",
                           (args.size, args.size))
        print(f"wrote {image} in {time.perf_counter() - start:.0f} s", flush=True)
    model, untrained = model_folder(args.model, workdir)
    out = workdir / "out"
    command = [sys.executable, "-m", "cellvit_cli", "segment", str(image), "-o", str(out),
               "--model", model, "--overwrite", *args.extra]
    print("$", shlex.join(command), flush=True)
    seconds, peak_gb, code = run_child(command)
    result = {"size": args.size, "mpx": round(args.size ** 2 / 1e6, 1), "exit_code": code,
              "seconds": round(seconds, 1), "mpx_per_s": round(args.size ** 2 / 1e6 / seconds, 3),
              "peak_rss_gb": round(peak_gb, 2), "rss_ok": peak_gb < RSS_LIMIT_GB,
              "labels": check_labels(out / f"{image.stem}_labels.tif") if code == 0 else None,
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "torch": torch.__version__,
                          "numpy": np.__version__},
              "model": model, "untrained": untrained, "command": shlex.join(command)}
    print(json.dumps(result, indent=1))
    (workdir / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
