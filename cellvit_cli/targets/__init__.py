"""Training targets from instance labels, in the dense-map layout of each head.

The targets of a head have exactly the layout of its activated prediction (see
docs/architecture.md), so decoding the targets is the round trip that tests a head.
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from cellvit_cli.targets.boundary import boundary_targets
from cellvit_cli.targets.flow import flow_targets
from cellvit_cli.targets.star import star_targets

HEADS = ("star", "flow", "boundary")


def head_channels(head: str, n_rays: int = 32) -> int:
    """Number of channels of `head`'s dense map."""
    return {"star": 1 + n_rays, "flow": 3, "boundary": 2}[head]


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
    labels = clean_labels(labels)
    makers = {"star": lambda: star_targets(labels, n_rays), "flow": lambda: flow_targets(labels),
              "boundary": lambda: boundary_targets(labels)}
    unknown = set(heads) - set(makers)
    if unknown:
        raise ValueError(f"unknown head(s) {sorted(unknown)}: choose from {HEADS}")
    return {head: makers[head]() for head in heads}
