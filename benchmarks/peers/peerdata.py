"""Data, paths and bookkeeping shared by the peer scripts; numpy and tifffile only.

The peer scripts run in their own virtual environments (StarDist on TensorFlow, Cellpose on
torch), where cellvit_cli is not installed, so what they share lives here. Images are read
as our tool reads them: colour (H, W, 3|4) becomes the mean of its first three channels,
(H, W) grey stays; both as float32.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "data" / "dsb2018"   # ../shared beside the checkout
PEERS_HOME = Path(os.environ.get("PEERS_HOME", Path.home() / ".cache" / "cellvit-peers"))
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = "fluo_train", "fluo_val", "test_fluo"
SPLIT_FOLDER = {"fluo_train": "train", "fluo_val": "train", "train_all": "train",
                "test_fluo": "test"}


def read_ids(data: Path, split: str, limit: int | None = None) -> list[str]:
    """Image ids of `split` (splits/<split>.txt), the first `limit` of them if given."""
    ids = [line.strip() for line in (data / "splits" / f"{split}.txt").read_text().splitlines()
           if line.strip()]
    return ids[:limit] if limit else ids


def to_grey(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) any dtype -> (H, W) float32; colour -> mean of the first 3 channels."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].astype(np.float32).mean(axis=-1)
    if image.ndim != 2:
        raise ValueError(f"expected (H, W) or (H, W, 3|4), got {image.shape}")
    return image.astype(np.float32)


def load_split(data: Path, split: str, limit: int | None = None
               ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(ids, grey float32 images, uint16/int labels) of a split of the DSB2018 folder."""
    folder = data / SPLIT_FOLDER[split]
    ids = read_ids(data, split, limit)
    images = [to_grey(tifffile.imread(folder / "images" / f"{i}.tif")) for i in ids]
    labels = [tifffile.imread(folder / "masks" / f"{i}.tif") for i in ids]
    return ids, images, labels


def median_diameter(labels: list[np.ndarray]) -> float:
    """Median equivalent-circle diameter (px) of all objects (as cellvit's training does)."""
    areas = np.concatenate([np.bincount(np.asarray(lab, np.int64).ravel())[1:] for lab in labels])
    areas = areas[areas > 0]
    return float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else 0.0


def list_tiffs(folder: Path, limit: int | None = None) -> list[Path]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    return paths[:limit] if limit else paths


def write_labels(path: Path, labels: np.ndarray) -> None:
    """uint16 (uint32 above 65,535 objects), zlib, written to a temp name then renamed."""
    labels = np.asarray(labels)
    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")
    os.replace(tmp, path)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def already_trained(summary_path: Path, minutes: float, force: bool) -> bool:
    """True if a model with this time budget is already trained there (exits if the budget
    differs, so results from two budgets are never mixed)."""
    if not summary_path.is_file() or force:
        return False
    done = json.loads(summary_path.read_text())["budget_minutes"]
    if done != minutes:
        sys.exit(f"{summary_path}: trained with a {done:g} min budget, not {minutes:g}; "
                 "use --force or another --out")
    print(f"{summary_path} exists: model already trained (--force to retrain)")
    return True


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def machine() -> dict:
    """What the numbers were measured on."""
    return {"host": platform.node(), "cpus": os.cpu_count(),
            "cpus_allowed": len(os.sched_getaffinity(0)),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": sys.version.split()[0],
            "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class Stopwatch:
    """Named wall-clock sections: `with watch("data"): ...`; `watch.seconds` holds the sums."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        return _Section(self, name)


class _Section:
    def __init__(self, watch: Stopwatch, name: str):
        self.watch, self.name = watch, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        self.watch.seconds[self.name] = round(self.watch.seconds.get(self.name, 0.0) + elapsed, 3)
        return False


def training_parser(peer: str, description: str) -> argparse.ArgumentParser:
    """The options both training scripts take; each adds its own recipe's options."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--minutes", type=float, default=110.0,
                   help="training budget in minutes (default 110: on one core, about the "
                        "core-minutes of our model's training)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DSB2018 folder")
    p.add_argument("--out", type=Path, default=PEERS_HOME / "models" / peer,
                   help=f"model folder to write (default ~/.cache/cellvit-peers/models/{peer})")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--val-limit", type=int, default=None, help="use only the first N val images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even if --out holds a finished model")
    return p
