"""Automatic object size: the zoom that brings an image's objects to the model's size.

The model segments reliably only near the object size it was trained at
(`ModelConfig.median_diameter`). `estimate_zoom` measures the objects with the model
itself: it segments the image at a probe zoom, takes the median equivalent-circle
diameter of the objects found, and moves the zoom to bring that median to the training
size, repeating while the zoom still moves by more than `TOLERANCE`. Objects already
within `KEEP_BAND` of that size keep zoom 1.

The first probe looks at half size, where objects of 8 to 128 px are measured well (on
fluo_val the medians at zoom 0.5 and 1 agree within ~10 %) at a quarter of the cost. A
probe is only believed for the sizes it can see (`LADDER`): when half size shows nothing
it can measure, full size looks for small objects and 1/8 for very large ones. These first
probes look at the whole image only while that is cheap (`FIRST_PROBE_PIXELS`); on bigger
images they look at `N_CROPS` crops of `FIRST_PROBE_SIDE` px picked by contrast, so a
2048 x 2048 image pays ~6 % of its segmentation for them instead of 25 %. Later probes
look at the whole image when it fits `whole_pixels`: when the zoom stops at one of those,
its maps and labels are the result. Costs: `benchmarks/zoom.py --cost` and
docs/benchmarks.md ("The first probe of a big image", `benchmarks/size_probes.py`).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cellvit_cli.preprocess import resize_labels

Slices = tuple[slice, slice]
Read = Callable[[Slices, float], np.ndarray]          # (region, zoom) -> (C, y', x') float32
Segment = Callable[[np.ndarray], tuple[dict, np.ndarray]]  # x -> (maps, int labels of x)

TOLERANCE = 0.15          # stop once the zoom moves by less than this fraction
KEEP_BAND = 1.6           # objects within this factor of the model's size keep zoom 1
MAX_PROBES = 5
MAX_TEXTURE = 0.1         # see _texture_inside
TEXTURE_MIN_SIDE = 512    # px: smaller images skip the texture check
MIN_FOLLOW = 0.2          # the median must move by at least this share of a zoom change
ZOOM_RANGE = (1 / 32, 8.0)
MIN_SIDE = 32             # px: a probe or the result is never smaller than this
MIN_OBJECTS = 2           # fewer objects than this is "nothing found"
PROBE_SIDE = 512          # px at the probe zoom, per crop, when the whole image is too big
N_CROPS = 4               # crops per probe (picked by content from a 4 x 4 grid)
FIRST_PROBE_SIDE = 256    # px per crop of a first probe (4x the largest object it believes)
FIRST_PROBE_PIXELS = 2 * N_CROPS * FIRST_PROBE_SIDE ** 2  # a first probe's whole-image limit


@dataclass(frozen=True)
class Rung:
    """A first probe: its zoom and the median object diameter (px at that zoom) it is
    believed for."""

    zoom: float
    min_diameter: float
    max_diameter: float


# Tried in order until one sees objects in its range: half size (objects of 8-128 px),
# full size (small objects, < 16 px), 1/8 (very large ones, >= 128 px).
LADDER = (Rung(0.5, 4.0, 64.0), Rung(1.0, 3.0, 16.0), Rung(0.125, 16.0, 64.0))


@dataclass
class Probe:
    """One segmentation at `zoom`: diameters (px at that zoom) of the objects found;
    `result` = (maps, labels) when the probe covered the whole image; `pieces`: (region of
    the image, int labels of it at `zoom`) per region looked at (the whole image or crops)."""

    zoom: float
    diameters: np.ndarray
    result: tuple[dict, np.ndarray] | None = None
    pieces: list[tuple[Slices, np.ndarray]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.diameters.size)

    @property
    def median(self) -> float:
        return float(np.median(self.diameters)) if self.count else 0.0

    @property
    def found(self) -> bool:
        return self.count >= MIN_OBJECTS


@dataclass
class SizeEstimate:
    """What `estimate_zoom` found.

    diameter: median object diameter in the input image (px), None if nothing was found;
    zoom: the zoom to segment at; note: why the zoom is not the plain estimate (nothing
    found, clamped, not converged), or None; probes: (zoom, median px at that zoom,
    objects) per probe; result: (maps, labels) of the whole image at `zoom` when a probe
    made them, else None.
    """

    diameter: float | None
    zoom: float
    note: str | None = None
    probes: list[tuple[float, float, int]] = field(default_factory=list)
    result: tuple[dict, np.ndarray] | None = None

    def describe(self) -> str:
        """'diameter 23.4 px, zoom 0.86' (plus the note), for log lines."""
        size = "no objects measured" if self.diameter is None else f"diameter {self.diameter:.1f} px"
        return f"{size}, zoom {self.zoom:.3g}" + (f" ({self.note})" if self.note else "")


def object_diameters(labels: np.ndarray, drop_border: bool = False) -> np.ndarray:
    """Equivalent-circle diameters (px) of the objects of (Y, X) int `labels`.

    drop_border: leave out objects touching the image edge (cut by a crop), unless that
    leaves none. Returns float64 (n,).
    """
    areas = np.bincount(labels.ravel())
    present = areas > 0
    present[0] = False
    if drop_border and present.any():
        inner = present.copy()
        edges = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        inner[np.unique(edges)] = False
        present = inner if inner.any() else present
    return 2 * np.sqrt(areas[present] / np.pi)


def clamp_zoom(zoom: float, shape: tuple[int, int]) -> float:
    """`zoom` within ZOOM_RANGE, and large enough that the image keeps MIN_SIDE px."""
    low = max(ZOOM_RANGE[0], MIN_SIDE / max(1, min(shape)))
    return float(min(max(zoom, low), max(low, ZOOM_RANGE[1])))


def estimate_zoom(shape: tuple[int, int], read: Read, segment: Segment, target: float,
                  whole_pixels: float = math.inf, keep_band: float = KEEP_BAND
                  ) -> SizeEstimate:
    """Estimate the median object diameter of an image and the zoom for `target` px.

    shape: (Y, X) of the image; read(region, zoom): model input of a region at a zoom;
    segment(x): (maps, labels) of model input x; target: the model's training median
    diameter (px); whole_pixels: the largest zoomed image probed whole (larger ones are
    probed on `N_CROPS` crops with the most contrast); keep_band: objects whose first
    measurement lies within target / keep_band .. target * keep_band keep zoom 1 (the
    model saw such sizes unzoomed in training; on fluo_val, zooming them costs AP@0.75).
    """
    crops = _CropPicker(shape, read)
    probes: list[Probe] = []

    def run(zoom: float, first: bool = False) -> Probe:
        limit, side = ((min(whole_pixels, FIRST_PROBE_PIXELS), FIRST_PROBE_SIDE) if first
                       else (whole_pixels, PROBE_SIDE))
        probe = _probe(shape, zoom, read, segment, limit, crops, side)
        probes.append(probe)
        return probe

    start = _first_probe(shape, lambda zoom: run(zoom, first=True))
    if start is None:
        return _nothing_found(probes)
    if abs(math.log(start.median / start.zoom / target)) <= math.log(keep_band):
        return _at_zoom_one(start, probes)
    return _refine(start, shape, target, run, probes)


def _at_zoom_one(probe: Probe, probes: list[Probe]) -> SizeEstimate:
    """Zoom 1 for objects near the model's size (reusing a whole-image probe at zoom 1)."""
    at_one = next((p for p in probes if p.zoom == 1.0 and p.result is not None), None)
    return SizeEstimate(probe.median / probe.zoom, 1.0, None,
                        [(p.zoom, p.median, p.count) for p in probes],
                        at_one.result if at_one else None)


def _first_probe(shape, run) -> Probe | None:
    """The first probe that finds objects in its rung's range (None: none does).

    Half size first; if its objects are too large, straight to 1/8 (full size would
    only see texture inside them), else full size for small objects, then 1/8. A finer
    probe loses to the 1/8 one when its objects are texture inside the large objects
    1/8 finds.
    """
    half, full, coarse = LADDER
    probe = run(half.zoom) if _fits(shape, half.zoom) else None
    if probe is not None and _in_range(probe, half):
        return _unless_texture(probe, shape, run)
    if probe is None or not (probe.found and probe.median >= half.max_diameter):
        probe = run(full.zoom)
        if _in_range(probe, full):
            return _unless_texture(probe, shape, run)
    if _fits(shape, coarse.zoom):
        probe = run(coarse.zoom)
        if _in_range(probe, coarse):
            return probe
    return None


def _unless_texture(probe: Probe, shape, run) -> Probe:
    """`probe`, or the 1/8 probe when that finds large objects that `probe`'s objects
    are only texture inside (see `_texture_inside`). Skipped below `TEXTURE_MIN_SIDE` px,
    where a probe costs more in overheads than in pixels and such objects are few."""
    coarse = LADDER[-1]
    if not probe.pieces or min(shape) < TEXTURE_MIN_SIDE:
        return probe
    big = run(coarse.zoom)
    return big if _in_range(big, coarse) and _texture_inside(probe, big) else probe


def _fits(shape, zoom: float) -> bool:
    return zoom >= 1 or min(shape) * zoom >= MIN_SIDE


def _in_range(probe: Probe, rung: Rung) -> bool:
    return probe.found and rung.min_diameter <= probe.median < rung.max_diameter


def _texture_inside(fine: Probe, coarse: Probe) -> bool:
    """Whether the objects of a finer probe fill less than `MAX_TEXTURE` of the coarser
    whole-image probe's objects in the regions the finer one looked at (count inside them
    x median area / their area): then they are texture inside large objects (nuclei of
    300 px seen at half size), not objects of their own. Small nuclei packed in a cluster
    that 1/8 sees as one blob fill it well."""
    if coarse.result is None:
        return False
    coarse_labels, count, area = coarse.result[1], 0, 0
    for region, fine_labels in fine.pieces:
        cut = tuple(slice(math.floor(s.start * coarse.zoom), math.ceil(s.stop * coarse.zoom))
                    for s in region)
        coarse_fg = resize_labels(coarse_labels[cut], fine_labels.shape) > 0
        area += np.count_nonzero(coarse_fg)
        inside = np.unique(fine_labels[coarse_fg])
        count += inside.size - (inside[:1] == 0).sum()
    return area > 0 and count * np.pi * (fine.median / 2) ** 2 < MAX_TEXTURE * area


def _refine(probe: Probe, shape, target: float, run, probes: list[Probe]) -> SizeEstimate:
    """Move the zoom from `probe` until it settles within TOLERANCE."""
    note = None
    while True:
        wanted = probe.zoom * target / probe.median
        zoom = clamp_zoom(wanted, shape)
        if not math.isclose(zoom, wanted, rel_tol=1e-6):
            note = f"zoom {wanted:.3g} clamped to {zoom:.3g}"
        if abs(math.log(zoom / probe.zoom)) <= math.log1p(TOLERANCE):
            return _estimate(probe, probe.zoom if probe.result else zoom, note, probes)
        if len(probes) >= MAX_PROBES:
            return _estimate(probe, zoom, f"stopped after {MAX_PROBES} probes", probes)
        nxt = run(zoom)
        if not nxt.found:  # objects vanished at the new zoom: keep the last measurement
            return _estimate(probe, zoom, note, probes)
        if _does_not_follow(probe, nxt):
            return _inconsistent(probes)
        probe = nxt


def _does_not_follow(before: Probe, after: Probe) -> bool:
    """Whether the median (px at the probe's zoom) barely moved although the zoom moved by
    more than 1.5x: the model finds the same size at every zoom, so it is not measuring
    objects."""
    zoom_change = abs(math.log(after.zoom / before.zoom))
    return (zoom_change > math.log(1.5)
            and abs(math.log(after.median / before.median)) < MIN_FOLLOW * zoom_change)


def _inconsistent(probes: list[Probe]) -> SizeEstimate:
    """Zoom 1 when what the model finds does not scale with the zoom (it is not measuring
    objects: an untrained model, or texture rather than cells)."""
    found = _nothing_found(probes)
    found.note = "the objects found do not scale with the zoom: zoom 1"
    return found


def _estimate(probe: Probe, zoom: float, note, probes: list[Probe]) -> SizeEstimate:
    reuse = probe.result if probe.result is not None and zoom == probe.zoom else None
    return SizeEstimate(probe.median / probe.zoom, zoom, note,
                        [(p.zoom, p.median, p.count) for p in probes], reuse)


def _nothing_found(probes: list[Probe]) -> SizeEstimate:
    """Zoom 1 (reusing a full-size probe of the whole image) when no probe measured objects."""
    at_one = next((p for p in probes if p.zoom == 1.0 and p.result is not None), None)
    return SizeEstimate(None, 1.0, "no objects the model can measure: zoom 1",
                        [(p.zoom, p.median, p.count) for p in probes],
                        at_one.result if at_one else None)


def _probe(shape, zoom: float, read: Read, segment: Segment, whole_pixels: float,
           crops: "_CropPicker", side: int = PROBE_SIDE) -> Probe:
    """Segment the whole image at `zoom` if it fits `whole_pixels`, else `N_CROPS` crops of
    `side` px."""
    full = (slice(0, shape[0]), slice(0, shape[1]))
    if shape[0] * shape[1] * zoom ** 2 <= whole_pixels:
        maps, labels = segment(read(full, zoom))
        return Probe(zoom, object_diameters(labels), (maps, labels), [(full, labels)])
    pieces = [(region, segment(read(region, zoom))[1]) for region in crops.regions(zoom, side)]
    diameters = [object_diameters(labels, drop_border=True) for _, labels in pieces]
    return Probe(zoom, np.concatenate(diameters), pieces=pieces)


class _CropPicker:
    """Crops of a side (px at a zoom), centred where the image has the most contrast.

    The centres are chosen once (standard deviation of a 4 x 4 grid of cells, read at a
    coarse zoom) and kept for every zoom, so all probes look at the same objects.
    """

    GRID = 4

    def __init__(self, shape: tuple[int, int], read: Read):
        self.shape, self.read = shape, read
        self._centres: list[tuple[int, int]] | None = None

    def centres(self) -> list[tuple[int, int]]:
        if self._centres is None:
            cells = []
            for ys in _cuts(self.shape[0], self.GRID):
                for xs in _cuts(self.shape[1], self.GRID):
                    side = max(ys.stop - ys.start, xs.stop - xs.start)
                    coarse = min(1.0, 64 / side)
                    score = float(np.std(self.read((ys, xs), coarse)))
                    cells.append((score, ((ys.start + ys.stop) // 2, (xs.start + xs.stop) // 2)))
            cells.sort(key=lambda cell: -cell[0])
            self._centres = [centre for _, centre in cells[:N_CROPS]]
        return self._centres

    def regions(self, zoom: float, side: int = PROBE_SIDE) -> list[Slices]:
        """The crops of `side` px at `zoom`, each once (crops as large as the image are all
        the same)."""
        side = math.ceil(side / zoom)
        windows = {tuple((w.start, w.stop) for w in (_window(c, side, n)
                                                     for c, n in zip(centre, self.shape)))
                   for centre in self.centres()}
        return [tuple(slice(*w) for w in window) for window in sorted(windows)]


def _cuts(n: int, count: int) -> list[slice]:
    edges = np.linspace(0, n, count + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _window(centre: int, side: int, n: int) -> slice:
    """A window of `side` (at most n) around `centre`, shifted to stay inside [0, n)."""
    side = min(side, n)
    start = min(max(0, centre - side // 2), n - side)
    return slice(start, start + side)
