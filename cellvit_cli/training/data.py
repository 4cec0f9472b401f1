"""Training data: pairing images with masks, checking them, and caching slow targets."""

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellvit_cli.io import InputError, atomic_path, list_tiffs, read_image, read_labels
from cellvit_cli.preprocess import prepare
from cellvit_cli.targets import clean_labels
from cellvit_cli.targets.flow import flow_targets

MASK_SUFFIXES = ("", "_masks", "_labels", "_mask")


@dataclass
class Sample:
    """One training image: normalised image (C, Y, X) float32, labels (Y, X) int32 (one piece
    per object), and cached unit flows (2, Y, X) float16 when the flow head is trained."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    flows: np.ndarray | None = None


def read_ids(path: str | Path) -> list[str]:
    """Image ids (file stems), one per line; blank lines and '#' comments ignored."""
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def pair_files(images_dir: Path, masks_dir: Path, ids: Sequence[str] | None = None
               ) -> list[tuple[Path, Path]]:
    """(image, mask) path pairs by stem; a mask may end in '', _masks, _labels or _mask.

    Raises ValueError naming every image without a mask (or id without an image).
    """
    images = {p.stem: p for p in list_tiffs(images_dir)}
    masks = {p.stem: p for p in list_tiffs(masks_dir)}
    stems = list(ids) if ids is not None else sorted(images)
    missing = [s for s in stems if s not in images]
    if missing:
        raise ValueError(f"{images_dir}: no image for id(s) {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    pairs, orphans = [], []
    for stem in stems:
        mask = next((masks[stem + s] for s in MASK_SUFFIXES if stem + s in masks), None)
        if mask is None:
            orphans.append(images[stem].name)
        else:
            pairs.append((images[stem], mask))
    if orphans:
        raise ValueError(f"{masks_dir}: no mask for image(s) {', '.join(orphans[:5])}"
                         + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""))
    return pairs


def load_sample(image_path: Path, mask_path: Path, in_channels: int, with_flows: bool,
                cache_dir: Path | None) -> Sample:
    """Read, normalise and check one pair; flows come from the cache when present.

    Raises InputError naming the file: a bad image or mask (a binary mask included, see
    `io.read_labels`), channels the model cannot take, a mask of another shape.
    """
    try:  # as `cellvit segment` does
        image = prepare(read_image(image_path).data, in_channels)
    except InputError:
        raise
    except ValueError as err:  # e.g. fewer channels than --in-channels
        raise InputError(image_path, str(err)) from err
    labels = read_labels(mask_path)
    if labels.shape != image.shape[1:]:
        raise InputError(mask_path, f"mask shape {labels.shape} differs from image "
                                    f"{image_path.name} shape {image.shape[1:]}")
    if labels.max() == 0:
        warnings.warn(f"{mask_path}: no objects (trained on as background only)", stacklevel=2)
    labels = clean_labels(labels)
    flows = cached_flows(labels, cache_dir) if with_flows else None
    return Sample(image_path.stem, image, labels, flows)


def require_objects(samples: Sequence[Sample], masks_dir: Path, what: str) -> None:
    """Raise ValueError naming `masks_dir` when samples were given but none has an object
    (nothing to learn, or a validation score of nothing)."""
    if samples and not any(s.labels.any() for s in samples):
        raise ValueError(f"{masks_dir}: all {len(samples)} {what} mask(s) are empty (no "
                         "objects); masks must label each object 1..N")


def cached_flows(labels: np.ndarray, cache_dir: Path | None) -> np.ndarray:
    """Unit flows (2, Y, X) float16 of `labels`, read from or written to `cache_dir`."""
    key = hashlib.sha1(labels.tobytes() + str(labels.shape).encode()).hexdigest()[:20]
    cache = Path(cache_dir) / f"flows_{key}.npy" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        return np.load(cache)
    flows = flow_targets(labels)[1:].astype(np.float16)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            np.save(tmp, flows)
    return flows


def load_samples(pairs: Sequence[tuple[Path, Path]], in_channels: int, heads: Sequence[str],
                 cache_dir: Path | None = None, progress: bool = True) -> list[Sample]:
    """Load every pair (see `load_sample`), with a progress bar."""
    from tqdm import tqdm

    with_flows = "flow" in heads
    # a context manager: an error ends the bar's line before its message is printed
    with tqdm(pairs, desc="loading", unit="image", disable=not progress) as bar:
        return [load_sample(i, m, in_channels, with_flows, cache_dir) for i, m in bar]


def median_diameter(samples: Sequence[Sample]) -> float:
    """Median equivalent-circle diameter (px) of all objects in `samples`; ValueError if
    they hold none."""
    areas = np.concatenate([np.bincount(s.labels.ravel())[1:] for s in samples])
    areas = areas[areas > 0]
    if not areas.size:
        raise ValueError("the training masks hold no objects: no median diameter")
    return float(np.median(2 * np.sqrt(areas / np.pi)))
