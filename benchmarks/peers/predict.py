"""Segment a folder of TIFFs with a peer model (or its untrained network), timing each image.

Run in that peer's environment (setup_envs.sh):
    $STARDIST_VENV/bin/python benchmarks/peers/predict.py stardist --model DIR IMAGES -o OUT
    $CELLPOSE_VENV/bin/python benchmarks/peers/predict.py cellpose --model DIR IMAGES -o OUT
    $STARDIST_VENV/bin/python benchmarks/peers/predict.py stardist --untrained IMAGES -o OUT \
        --warmup WARMUP.tif                      # speed only, no trained model

Writes OUT/<stem>_labels.tif (uint16, uint32 above 65,535 objects; what `cellvit evaluate`
pairs with <stem>.tif) and OUT/timing.json. Each image's time runs from reading the file to
the written labels: read, mean grey, normalisation, network, post-processing, write. Loading
the model is timed apart; the first image carries the framework's warm-up (graph tracing,
allocator), as a user's first image would, unless --warmup segments another image first
(not timed, not written).

Settings are each peer's defaults for a model trained by our scripts:
- StarDist: 1-99.8 percentile normalisation, the thresholds tuned on fluo_val by
  `optimize_thresholds`, `n_tiles` from StarDist's own guess (tiles of about 512 px: 1 x 1
  for a 256 px image, 4 x 4 for a 2048 px mosaic).
- Cellpose: channels [0, 0] (grey), its default 1-99 percentile normalisation,
  cellprob_threshold 0, flow_threshold 0.4, diameter None: Cellpose's rule for a model it
  trained, zoom = diam_mean / diam_labels (training rescaled each image so that its median
  object diameter became diam_mean, the training objects' median diameter; diam_labels is
  the mean of those per-image diameters, so an average image is brought to the training
  size), tiles of 224 with 10 % overlap.

Speed only (--untrained, no model trained, so no scores): the peer's standard network with
random weights, so that its prediction time can be taken without training it.
- StarDist: the 2D notebook config of train_stardist.py (32 rays, grid 2) and prob_thresh
  0.99, nms_thresh 0.4: almost no candidate passes, so its NMS has nearly nothing to do and
  the time is a LOWER BOUND of a trained model's.
- Cellpose: its standard nuclei network (CPnet, nbase 32-256, diam_mean 17, so zoom 1 with
  diameter None); its flow dynamics follow the random flows of every pixel whose cell
  probability passes cellprob_threshold 0: timing.json records that fraction of pixels
  and the masks found per image, what the dynamics had to do (--cellprob-thresh below the
  random network's cell probabilities gives them pixels to move).
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
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", type=Path,
                       help="model folder written by train_stardist.py / train_cellpose.py")
    model.add_argument("--untrained", action="store_true",
                       help="speed only: the standard network with random weights (see above)")
    p.add_argument("--cellprob-thresh", type=float, default=0.0,
                   help="Cellpose: pixels above this cell probability go through its flow "
                        "dynamics (default 0, its own)")
    p.add_argument("--warmup", type=Path, default=None,
                   help="segment this image once before the timed ones (not timed or written)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (sorted)")
    return p.parse_args(argv)


class StarDistPeer:
    """model_dir None: the notebook config with random weights and prob_thresh 0.99."""

    def __init__(self, model_dir: Path | None):
        from stardist.models import StarDist2D

        if model_dir is None:
            self.model = StarDist2D(untrained_stardist_config(), name=None, basedir=None)
            self.model.thresholds = {"prob": 0.99, "nms": 0.4}
        else:
            self.model = StarDist2D(None, name=model_dir.name, basedir=str(model_dir.parent))
        self.settings = {"normalize": [1, 99.8], "thresholds": self.model.thresholds._asdict(),
                         "untrained": model_dir is None}
        self.last: dict = {}  # what the last image took: its tiles

    def segment(self, image: np.ndarray) -> np.ndarray:
        from csbdeep.utils import normalize

        x = normalize(image, 1, 99.8, axis=(0, 1))
        n_tiles = self.model._guess_n_tiles(x)
        labels, _ = self.model.predict_instances(x, n_tiles=n_tiles, show_tile_progress=False)
        self.last = {"n_tiles": list(n_tiles)}
        return labels


def untrained_stardist_config():
    """train_stardist.py's Config2D (the 2D notebook's), seeded: weights are random."""
    import tensorflow as tf
    from stardist.models import Config2D
    from train_stardist import GRID, N_RAYS, PATCH

    tf.random.set_seed(0)
    return Config2D(n_rays=N_RAYS, grid=GRID, n_channel_in=1, train_patch_size=PATCH,
                    use_gpu=False, train_tensorboard=False)


class CellposePeer:
    """model_dir None: the standard nuclei network (diam_mean 17) with random weights."""

    UNTRAINED_DIAM_MEAN = 17.0  # Cellpose's nuclei model

    def __init__(self, model_dir: Path | None, cellprob_thresh: float = 0.0):
        import torch
        from cellpose import models

        if model_dir is None:
            torch.manual_seed(0)
            self.model = models.CellposeModel(pretrained_model=False, model_type=None,
                                              diam_mean=self.UNTRAINED_DIAM_MEAN, nchan=2,
                                              device=torch.device("cpu"))
        else:
            summary = json.loads((model_dir / "train_summary.json").read_text())
            self.model = models.CellposeModel(pretrained_model=summary["weights"],
                                              device=torch.device("cpu"))
        diam_mean, diam_labels = float(self.model.diam_mean), float(self.model.diam_labels)
        self.settings = {"channels": [0, 0], "diameter": None, "diam_mean": diam_mean,
                         "diam_labels": diam_labels, "zoom": diam_mean / diam_labels,
                         "cellprob_threshold": cellprob_thresh, "flow_threshold": 0.4,
                         "untrained": model_dir is None}
        self.last: dict = {}  # what the last image took: the pixels its dynamics moved

    def segment(self, image: np.ndarray) -> np.ndarray:
        """diameter=None: Cellpose zooms by diam_mean / diam_labels, its rule for own models."""
        thresh = self.settings["cellprob_threshold"]
        masks, flows = self.model.eval(image, channels=[0, 0], diameter=None,
                                       cellprob_threshold=thresh, flow_threshold=0.4)[:2]
        self.last = {"dynamics_pixel_fraction": round(float((flows[2] > thresh).mean()), 4)}
        return masks


def versions(peer: str) -> dict:
    from importlib.metadata import version

    names = {"stardist": ("stardist", "csbdeep", "tensorflow-cpu"),
             "cellpose": ("cellpose", "torch")}[peer]
    return {**{n: version(n) for n in names}, "numpy": np.__version__}


def segment_file(peer, path: Path, out: Path | None) -> dict:
    """Read, segment and (out not None) write one image; its row of timing.json."""
    t0 = time.perf_counter()
    image = peerdata.to_grey(tifffile.imread(path))
    labels = peer.segment(image)
    if out is not None:
        peerdata.write_labels(out / f"{path.stem}_labels.tif", labels)
    seconds = time.perf_counter() - t0
    return {"image": path.name, "shape": list(image.shape), "seconds": round(seconds, 4),
            "objects": int(len(np.unique(labels)) - 1), **peer.last}


def main(argv=None) -> None:
    args = parse_args(argv)
    paths = peerdata.list_tiffs(args.images, args.limit)
    if not paths:
        sys.exit(f"{args.images}: no TIFF images")
    args.out.mkdir(parents=True, exist_ok=True)
    machine = peerdata.machine()
    start = time.perf_counter()
    peer = (StarDistPeer(args.model) if args.peer == "stardist"
            else CellposePeer(args.model, args.cellprob_thresh))
    load_seconds = time.perf_counter() - start
    warmup = None if args.warmup is None else segment_file(peer, args.warmup, None)
    rows = []
    for path in paths:
        rows.append(segment_file(peer, path, args.out))
        print(f"{path.name}: {rows[-1]['objects']} objects, {rows[-1]['seconds']:.2f} s",
              flush=True)
    times = np.array([r["seconds"] for r in rows])
    timing = {"peer": args.peer, "model": args.model or "untrained", "images_dir": args.images,
              "settings": peer.settings, "n_images": len(rows), "warmup": warmup,
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
