"""Training targets from instance labels, in the dense-map layout of each head.

The targets of a head have exactly the layout of its activated prediction (see
docs/architecture.md), so decoding the targets is the round trip that tests a head. Each
head's builder is its own module here, named by the head's entry in `cellvit_cli.registry`.
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from cellvit_cli.registry import HEADS, head_spec


def clean_labels(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected piece of each object and fill its holes.

    labels: (Y, X) int. Returns int32 (Y, X) with the same ids. Some annotated nuclei are
    drawn in several pieces; star and flow targets assume one piece per object.
    """
    labels = np.asarray(labels, dtype=np.int32)
    out = np.zeros_like(labels)
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = labels[box] == i
        pieces, n = ndi.label(mask)
        if n > 1:
            mask = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        mask = ndi.binary_fill_holes(mask)
        out[box][mask & (out[box] == 0)] = i
    return out


def make_targets(labels: np.ndarray, heads: Sequence[str] = HEADS,
                 n_rays: int = 32) -> dict[str, np.ndarray]:
    """Targets of every head in `heads` for one label image.

    labels: (Y, X) int instance labels. Returns {head: float32 (C, Y, X)}.
    """
    unknown = set(heads) - set(HEADS)
    if unknown:
        raise ValueError(f"unknown head(s) {sorted(unknown)}: choose from {HEADS}")
    labels = clean_labels(labels)
    return {head: head_targets(labels, head, n_rays) for head in heads}


def head_targets(labels: np.ndarray, head: str, n_rays: int = 32) -> np.ndarray:
    """float32 (C, Y, X) targets of one head for (Y, X) int32 `labels` already cleaned
    (`clean_labels`); n_rays goes to ray heads only."""
    spec = head_spec(head)
    return spec.targets(labels, n_rays) if spec.ray_channels else spec.targets(labels)
