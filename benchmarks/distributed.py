"""`segment_paths_distributed` on a LocalCluster of 1 and 2 worker processes against the
single-process `segment_paths`: wall time, the client's peak memory, each worker's peak
memory, for a folder of images and for one big image (its blocks spread over the workers).

Inputs are mosaics of the StarDist nuclei sample (tiled zlib TIFFs, written streaming).
Each measurement runs in a child process of its own, so that the peak resident memory
(ru_maxrss) and CPU time it reports are those of the run alone: the client's own (with the
LocalCluster's scheduler, which lives in the client process; a single-process run does all
the work there), and each worker's peak, read on the worker.

    python benchmarks/distributed.py                       # folder of 8 x 1024^2, one 4096^2
    python benchmarks/distributed.py --folder 0 --big 16384 --workers 2 --no-single
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # this file's own folder would hide the `distributed` package

from cellvit_cli.device import cpu_description
from cellvit_cli.samples import write_mosaic_tiffs

GB = 1024 ** 2  # ru_maxrss is in kB on Linux


def make_inputs(workdir: Path, n_folder: int, folder_size: int, big: int) -> dict:
    """{'folder': folder of n_folder mosaics, 'big': folder with one big mosaic} (absent
    when their count or size is 0)."""
    inputs = {}
    if n_folder:
        for i in range(n_folder):
            write_mosaic_tiffs(workdir / f"folder/f{i}.tif", workdir / f"truth/f{i}.tif",
                               (folder_size, folder_size), seed=i)
        inputs["folder"] = workdir / "folder"
    if big:
        write_mosaic_tiffs(workdir / f"big/big_{big}.tif", workdir / "truth/big.tif", (big, big))
        inputs["big"] = workdir / "big"
    return inputs


def child(args) -> None:
    """Run one segmentation (single process when workers == 0) and print its figures."""
    from cellvit_cli.inference.pipeline import SegmentSettings, segment_paths

    settings = SegmentSettings(diameter=args.diameter, progress=False, overwrite=True,
                               block_size=args.block_size)
    start = time.perf_counter()
    workers_gb, n_workers = [], args.workers[0]
    if n_workers == 0:
        report = segment_paths([args.input], args.out, settings)
    else:
        import distributed

        from cellvit_cli.inference.distributed import segment_paths_distributed

        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            report = segment_paths_distributed([args.input], args.out, settings, client)
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            workers_gb = [round(kb / GB, 3) for kb in peaks.values()]
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": round(seconds, 2), "done": report.done,
                      "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                      "failed": len(report.failed), "cells": report.cells,
                      "megapixels": round(report.pixels / 1e6, 2),
                      "client_gb": round(usage.ru_maxrss / GB, 3),
                      "workers_gb": workers_gb}))


def measure(kind: str, path: Path, workers: int, out: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", "--input", str(path), "--out", str(out),
               "--workers", str(workers), "--diameter", str(args.diameter),
               "--block-size", str(args.block_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{kind} with {workers} worker(s) failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(kind=kind, workers=workers)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=int, default=8, help="images in the folder (0: none)")
    parser.add_argument("--folder-size", type=int, default=1024)
    parser.add_argument("--big", type=int, default=4096, help="side of the big image (0: none)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-single", action="store_true", help="skip the single-process run")
    parser.add_argument("--diameter", type=float, default=17.0)
    parser.add_argument("--block-size", type=int, default=1536)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cellvit-distributed-"))
    print(f"# {cpu_description()}; inputs and outputs in {workdir}", flush=True)
    inputs = make_inputs(workdir, args.folder, args.folder_size, args.big)
    counts = ([] if args.no_single else [0]) + args.workers
    rows = [measure(kind, path, n, workdir / f"out_{kind}_{n}", args)
            for kind, path in inputs.items() for n in counts]
    _print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_description(), "rows": rows}, indent=1))


def _print_table(rows: list[dict]) -> None:
    print("\n| input | workers | s | Mpx/s | vs 1 process | cells | client peak GB | "
          "client CPU s | worker peak GB |\n|---|---|---|---|---|---|---|---|---|")
    single = {r["kind"]: r["seconds"] for r in rows if r["workers"] == 0}
    for r in rows:
        ratio = f"{single[r['kind']] / r['seconds']:.2f}x" if r["kind"] in single else ""
        print(f"| {r['kind']} | {r['workers'] or '1 process'} | {r['seconds']} | "
              f"{r['megapixels'] / r['seconds']:.2f} | {ratio} | {r['cells']} | "
              f"{r['client_gb']} | {r['client_cpu_s']} | "
              f"{', '.join(map(str, r['workers_gb'])) or '-'} |")


if __name__ == "__main__":
    main()
