"""Random training crops: dihedral transforms, scale and intensity jitter, then targets.

Star and boundary targets are computed on each augmented crop (cheap, and exact under any
flip, rotation or zoom); flows come from the per-image cache and are transformed with it.
The intensity steps aimed at the failures of issue 12 (dim objects beside bright ones,
uneven background, blur, noise of several levels, crowded regions) are off in
`AugmentConfig()` (the recipe of nuclei_fluo_tiny) and on in `AUGMENTATIONS["robust"]`.
"""

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from cellvit_cli.settings import AugmentConfig  # light, for the CLI's defaults
from cellvit_cli.targets.boundary import boundary_targets
from cellvit_cli.targets.star import star_targets
from cellvit_cli.training.data import Sample

MARGIN = 32  # px of context around a crop so that rays of objects cut by the crop stay true
GLOW_PX = 3  # px around an object that take its gain in `scale_objects`


def dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate (..., Y, X) by k * 90 degrees (counter-clockwise), after an optional X flip."""
    if flip:
        array = array[..., ::-1]
    return np.rot90(array, k, axes=(-2, -1))


def dihedral_flows(flows: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """`dihedral` for a (2, Y, X) vector field of (dy, dx): moves pixels and turns vectors."""
    dy, dx = flows[0], flows[1]
    if flip:
        dx = -dx
    for _ in range(k % 4):  # rot90 counter-clockwise: (dy, dx) -> (-dx, dy)
        dy, dx = -dx, dy
    return dihedral(np.stack([dy, dx]), k, flip)


def random_window(shape: tuple[int, int], size: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """A `size` x `size` window inside `shape` (or the whole axis where it is smaller)."""
    starts = [rng.integers(0, max(n - size, 0) + 1) for n in shape]
    return tuple(slice(s, s + size) for s in starts)


def _fit(array: np.ndarray, size: int, order: int) -> np.ndarray:
    """Zoom (..., y, x) to (..., size, size) with spline `order` (0 = nearest)."""
    zoom = (1,) * (array.ndim - 2) + (size / array.shape[-2], size / array.shape[-1])
    if zoom[-2:] == (1.0, 1.0):
        return np.ascontiguousarray(array)
    out = ndi.zoom(array, zoom, order=order, prefilter=False, grid_mode=True, mode="nearest")
    return out[..., :size, :size]


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
    pad = [(0, 0)] * (array.ndim - 2) + [(0, max(size - n, 0)) for n in array.shape[-2:]]
    return np.pad(array, pad) if any(p[1] for p in pad) else array


def jitter_intensity(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random gain, offset, gamma and Gaussian noise on a normalised (C, Y, X) image (and a
    background ramp and blur where `cfg` asks for them)."""
    gamma = np.exp(rng.uniform(*np.log(cfg.gamma_range)))
    image = np.sign(image) * np.abs(image) ** gamma
    image = image * rng.uniform(*cfg.gain_range) + rng.uniform(*cfg.offset_range)
    if cfg.gradient_max > 0:
        image = image + background_ramp(image.shape[-2:], cfg.gradient_max, rng)
    if cfg.blur_sigma_max > 0 and rng.random() < cfg.blur_prob:
        sigma = rng.uniform(0, cfg.blur_sigma_max)
        image = ndi.gaussian_filter(image, (0, sigma, sigma))
    noise_std = rng.uniform(*cfg.noise_std_range) if cfg.noise_std_range else cfg.noise_std
    return (image + rng.normal(0, noise_std, image.shape)).astype(np.float32)


def background_ramp(shape: tuple[int, int], amplitude: float, rng: np.random.Generator
                    ) -> np.ndarray:
    """(Y, X) float32 linear ramp in a random direction, from 0 to up to +-`amplitude`."""
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[:shape[0], :shape[1]].astype(np.float32)
    ramp = np.cos(angle) * y / max(shape[0], 1) + np.sin(angle) * x / max(shape[1], 1)
    return (rng.uniform(-amplitude, amplitude) * (ramp - ramp.min())).astype(np.float32)


def scale_objects(image: np.ndarray, labels: np.ndarray, gain_range: tuple[float, float],
                  rng: np.random.Generator) -> np.ndarray:
    """Each object of (Y, X) `labels` with its own contrast to the background (gain
    log-uniform in `gain_range`) in the (C, Y, X) image: dim objects beside bright ones.
    The background level is the median of the pixels outside objects; each gain covers its
    object grown by GLOW_PX (the glow around a nucleus dims with it) and is smoothed over
    1 px, so that no ring or hard edge marks an object."""
    gains = np.exp(rng.uniform(*np.log(gain_range), size=labels.max() + 1)).astype(np.float32)
    gains[0] = 1.0
    outside = labels == 0
    background = (np.median(image[:, outside], axis=1) if outside.any()
                  else np.zeros(len(image), np.float32))[:, None, None]
    gain_map = ndi.gaussian_filter(gains[expand_labels(labels, GLOW_PX)], 1.0)[None]
    return (background + (image - background) * gain_map).astype(np.float32)


def contact_points(labels: np.ndarray) -> np.ndarray:
    """(N, 2) int (y, x) of the pixels of (Y, X) `labels` that touch another object."""
    right = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    down = (labels[1:] != labels[:-1]) & (labels[1:] > 0) & (labels[:-1] > 0)
    return np.concatenate([np.argwhere(right), np.argwhere(down)])


@dataclass(frozen=True)
class CropGeometry:
    """Where a crop comes from: a source `window` (with margin), a dihedral transform
    (`k` quarter turns after an optional X `flip`) and a `scale` (zoom)."""

    window: tuple[slice, slice]
    k: int
    flip: bool
    scale: float


def random_geometry(shape: tuple[int, int], cfg: AugmentConfig, rng: np.random.Generator,
                    contacts: np.ndarray | None = None) -> CropGeometry:
    """A random crop geometry for an image of `shape`; with `cfg.crowded_fraction` of the
    crops centred on one of `contacts` ((N, 2) y, x), where there are any."""
    size = cfg.crop_size + 2 * MARGIN
    scale = float(np.exp(rng.uniform(*np.log(cfg.scale_range))))
    side = int(round(size / scale))
    crowded = cfg.crowded_fraction > 0 and rng.random() < cfg.crowded_fraction
    if crowded and contacts is not None and len(contacts):
        window = window_around(shape, side, contacts[rng.integers(len(contacts))])
    else:
        window = random_window(shape, side, rng)
    return CropGeometry(window, int(rng.integers(4)), bool(rng.integers(2)), scale)


def window_around(shape: tuple[int, int], size: int, centre: np.ndarray) -> tuple[slice, slice]:
    """The `size` x `size` window inside `shape` nearest to being centred on (y, x) `centre`."""
    starts = [int(min(max(c - size // 2, 0), max(n - size, 0))) for c, n in zip(centre, shape)]
    return tuple(slice(s, s + size) for s in starts)


def crop_at(sample: Sample, geometry: CropGeometry, heads: tuple[str, ...], n_rays: int,
            crop_size: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """The crop of `sample` at `geometry`: image (C, S, S) float32, {head: target} and the
    crop's labels (S, S) int32."""
    g, size = geometry, crop_size + 2 * MARGIN
    labels = _pad_to(dihedral(sample.labels[g.window], g.k, g.flip), 1)
    image = dihedral(sample.image[(slice(None), *g.window)], g.k, g.flip)
    zoom_size = min(int(round(max(labels.shape) * g.scale)), size)
    labels = _pad_to(_fit(labels, zoom_size, 0), size)
    image = _pad_to(_fit(image, zoom_size, 1), size)
    inner = (slice(MARGIN, MARGIN + crop_size),) * 2
    targets = {}
    if "star" in heads:
        targets["star"] = star_targets(labels, n_rays)[(slice(None), *inner)]
    if "boundary" in heads:
        targets["boundary"] = boundary_targets(labels[inner])
    if "flow" in heads:
        flows = dihedral_flows(sample.flows[(slice(None), *g.window)].astype(np.float32), g.k, g.flip)
        flows = _pad_to(_fit(flows, zoom_size, 1), size)[(slice(None), *inner)]
        targets["flow"] = np.concatenate([(labels[inner] > 0)[None], flows]).astype(np.float32)
    return image[(slice(None), *inner)], targets, labels[inner]


def random_crop(sample: Sample, heads: tuple[str, ...], n_rays: int, cfg: AugmentConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One augmented crop: image (C, S, S) float32 and {head: target (C_head, S, S)}."""
    if cfg.crowded_fraction > 0 and sample.contacts is None:
        sample.contacts = contact_points(sample.labels)
    geometry = random_geometry(sample.labels.shape, cfg, rng, sample.contacts)
    image, targets, labels = crop_at(sample, geometry, heads, n_rays, cfg.crop_size)
    if cfg.object_gain_range and rng.random() < cfg.object_gain_prob:
        image = scale_objects(image, labels, cfg.object_gain_range, rng)
    return jitter_intensity(image, cfg, rng), targets
