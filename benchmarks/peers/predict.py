"""Segment a folder of TIFFs with a trained peer model, timing every image end to end.

Run in that peer's environment (setup_envs.sh):
    $STARDIST_VENV/bin/python benchmarks/peers/predict.py stardist --model DIR IMAGES -o OUT
    $CELLPOSE_VENV/bin/python benchmarks/peers/predict.py cellpose --model DIR IMAGES -o OUT

Writes OUT/<stem>_labels.tif (uint16, uint32 above 65,535 objects; what `cellvit evaluate`
pairs with <stem>.tif) and OUT/timing.json. Each image's time runs from reading the file to
the written labels: read, mean grey, normalisation, network, post-processing, write. Loading
the model is timed apart; the first image carries the framework's warm-up (graph tracing,
allocator), as a user's first image would.

Settings are each peer's defaults for a model trained by our scripts:
- StarDist: 1-99.8 percentile normalisation, the thresholds tuned on fluo_val by
  `optimize_thresholds`, `n_tiles` from StarDist's own guess (1 x 1 for these sizes on CPU).
- Cellpose: channels [0, 0] (grey), its default 1-99 percentile normalisation,
  cellprob_threshold 0, flow_threshold 0.4, diameter None: Cellpose's rule for a model it
  trained, zoom = diam_mean / diam_labels (training rescaled each image so that its median
  object diameter became diam_mean, the training objects' median diameter; diam_labels is
  the mean of those per-image diameters, so an average image is brought to the training
  size), tiles of 224 with 10 % overlap.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import peerdata
import tifffile


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("peer", choices=("stardist", "cellpose"))
    p.add_argument("images", type=Path, help="folder of TIFF images")
    p.add_argument("--model", type=Path, required=True,
                   help="model folder written by train_stardist.py / train_cellpose.py")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    return p.parse_args(argv)


class StarDistPeer:
    def __init__(self, model_dir: Path):
        from stardist.models import StarDist2D

        self.model = StarDist2D(None, name=model_dir.name, basedir=str(model_dir.parent))
        self.settings = {"normalize": [1, 99.8], "thresholds": self.model.thresholds._asdict()}

    def segment(self, image: np.ndarray) -> np.ndarray:
        from csbdeep.utils import normalize

        x = normalize(image, 1, 99.8, axis=(0, 1))
        n_tiles = self.model._guess_n_tiles(x)
        labels, _ = self.model.predict_instances(x, n_tiles=n_tiles, show_tile_progress=False)
        return labels


class CellposePeer:
    def __init__(self, model_dir: Path):
        import torch
        from cellpose import models

        summary = json.loads((model_dir / "train_summary.json").read_text())
        self.model = models.CellposeModel(pretrained_model=summary["weights"],
                                          device=torch.device("cpu"))
        diam_mean, diam_labels = float(self.model.diam_mean), float(self.model.diam_labels)
        self.settings = {"channels": [0, 0], "diameter": None, "diam_mean": diam_mean,
                         "diam_labels": diam_labels, "zoom": diam_mean / diam_labels,
                         "cellprob_threshold": 0.0, "flow_threshold": 0.4}

    def segment(self, image: np.ndarray) -> np.ndarray:
        """diameter=None: Cellpose zooms by diam_mean / diam_labels, its rule for own models."""
        masks = self.model.eval(image, channels=[0, 0], diameter=None,
                                cellprob_threshold=0.0, flow_threshold=0.4)[0]
        return masks


def versions(peer: str) -> dict:
    from importlib.metadata import version

    names = {"stardist": ("stardist", "csbdeep", "tensorflow-cpu"),
             "cellpose": ("cellpose", "torch")}[peer]
    return {**{n: version(n) for n in names}, "numpy": np.__version__}


def main(argv=None) -> None:
    args = parse_args(argv)
    paths = peerdata.list_tiffs(args.images, args.limit)
    if not paths:
        sys.exit(f"{args.images}: no TIFF images")
    args.out.mkdir(parents=True, exist_ok=True)
    machine = peerdata.machine()
    start = time.perf_counter()
    peer = (StarDistPeer if args.peer == "stardist" else CellposePeer)(args.model)
    load_seconds = time.perf_counter() - start
    rows = []
    for path in paths:
        t0 = time.perf_counter()
        image = peerdata.to_grey(tifffile.imread(path))
        labels = peer.segment(image)
        peerdata.write_labels(args.out / f"{path.stem}_labels.tif", labels)
        seconds = time.perf_counter() - t0
        rows.append({"image": path.name, "shape": list(image.shape), "seconds": round(seconds, 4),
                     "objects": int(len(np.unique(labels)) - 1)})
        print(f"{path.name}: {rows[-1]['objects']} objects, {seconds:.2f} s", flush=True)
    times = np.array([r["seconds"] for r in rows])
    timing = {"peer": args.peer, "model": args.model, "images_dir": args.images,
              "settings": peer.settings, "n_images": len(rows),
              "load_seconds": round(load_seconds, 3), "images_seconds": round(times.sum(), 3),
              "seconds_per_image": round(times.mean(), 4),
              "median_seconds_per_image": round(float(np.median(times)), 4),
              "seconds_per_image_with_load": round((times.sum() + load_seconds) / len(rows), 4),
              "per_image": rows, "versions": versions(args.peer), "machine": machine,
              "command": sys.argv}
    peerdata.write_json(args.out / "timing.json", timing)
    print(f"{args.peer}: {len(rows)} images, {timing['seconds_per_image']:.3f} s/image "
          f"(median {timing['median_seconds_per_image']:.3f}), model load {load_seconds:.1f} s")


if __name__ == "__main__":
    main()
