"""Training data: pairing images with masks, checking them, and caching slow targets."""

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellvit_cli import pairing
from cellvit_cli.io import InputError, atomic_path, read_image, read_labels
from cellvit_cli.preprocess import PERCENTILES, prepare
from cellvit_cli.targets import clean_labels
from cellvit_cli.targets.flow import flow_targets


@dataclass
class Sample:
    """One training image: normalised image (C, Y, X) float32, labels (Y, X) int32 (one piece
    per object), and cached unit flows (2, Y, X) float16 when the flow head is trained.
    `contacts` (N, 2) int (y, x) of pixels where two objects touch is filled on first use by
    `augment.contact_points` (crops that over-sample crowded regions)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    flows: np.ndarray | None = None
    contacts: np.ndarray | None = None


def read_ids(path: str | Path) -> list[str]:
    """Image ids (file stems), one per line; blank lines and '#' comments ignored."""
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def pair_files(images_dir: Path, masks_dir: Path, ids: Sequence[str] | None = None,
               mask_suffix: str | None = None) -> list[tuple[Path, Path]]:
    """(image, mask) path pairs by name, with the rules of `cellvit_cli.pairing`: a mask is
    named like its image, or with `_masks`, `_mask`, `_labels` or `_seg.npy` (Cellpose)
    after its name; `mask_suffix` fixes one. Images and masks may share one folder.

    Raises ValueError naming every image without a mask (or id without an image), and
    PairingError (a ValueError) on ambiguous names.
    """
    naming = pairing.MASKS.fixed(mask_suffix)
    found = pairing.pair_folders(images_dir, masks_dir, pairing.IMAGES, naming, ids)
    if found.missing_keys:
        raise ValueError(f"{images_dir}: no image for id(s) {_some(found.missing_keys)}")
    if found.unpaired:
        raise ValueError(f"{masks_dir}: no mask for image(s) "
                         f"{_some([p.name for p in found.unpaired])}"
                         + _mask_hint(found, images_dir, masks_dir, naming))
    return [(image, mask) for _, image, mask in found.pairs]


def _some(names: Sequence[str], limit: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more'."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _mask_hint(found: pairing.Pairing, images_dir: Path, masks_dir: Path,
               naming: pairing.Naming) -> str:
    """Why images found no mask: the naming in use, or (when nothing paired) what was seen."""
    if found.pairs:
        return f" (masks are named <image name>{pairing.shown(found.suffixes[1])})"
    if Path(images_dir).resolve() == Path(masks_dir).resolve():
        endings = ", ".join(pairing.shown(s) for s in naming.suffixes if s) or "a suffix"
        return (f"; in one folder masks are named <image name> + {endings} (an image is "
                "never its own mask); choose another ending with --mask-suffix")
    seen = pairing.list_files(masks_dir, naming.extensions)
    text = f"; masks pair with images by name, ending in {naming.describe()}"
    if seen:
        text += f"; seen in {masks_dir}: {_some([p.name for p in seen], 3)}"
    return text + "; choose another ending with --mask-suffix"


def load_sample(image_path: Path, mask_path: Path, in_channels: int, with_flows: bool,
                cache_dir: Path | None, percentiles=PERCENTILES) -> Sample:
    """Read, normalise (between `percentiles`, as `cellvit segment` does with the model's
    config.json) and check one pair; flows come from the cache when present.

    Raises InputError naming the file: a bad image or mask (a binary mask included, see
    `io.read_labels`), channels the model cannot take, a mask of another shape.
    """
    try:
        image = prepare(read_image(image_path).data, in_channels, percentiles=percentiles)
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
                 cache_dir: Path | None = None, progress: bool = True,
                 percentiles=PERCENTILES) -> list[Sample]:
    """Load every pair (see `load_sample`), with a progress bar."""
    from tqdm import tqdm

    with_flows = "flow" in heads
    # a context manager: an error ends the bar's line before its message is printed
    with tqdm(pairs, desc="loading", unit="image", disable=not progress) as bar:
        return [load_sample(i, m, in_channels, with_flows, cache_dir, percentiles)
                for i, m in bar]


def median_diameter(samples: Sequence[Sample]) -> float:
    """Median equivalent-circle diameter (px) of all objects in `samples`; ValueError if
    they hold none."""
    areas = np.concatenate([np.bincount(s.labels.ravel())[1:] for s in samples])
    areas = areas[areas > 0]
    if not areas.size:
        raise ValueError("the training masks hold no objects: no median diameter")
    return float(np.median(2 * np.sqrt(areas / np.pi)))
