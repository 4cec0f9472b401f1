"""Clean-up of decoded labels at the input's size: minimum area, cells on the image border."""

import numpy as np

from cellvit_cli.postprocess.checks import relabel

ALL_BORDERS = (True, True, True, True)  # top, bottom, left, right


def border_labels(labels: np.ndarray, borders=ALL_BORDERS) -> np.ndarray:
    """The labels (sorted, 0 excluded) with a pixel on the chosen sides of (Y, X) `labels`:
    borders = (top, bottom, left, right)."""
    top, bottom, left, right = borders
    edges = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    values = [edge for edge, on in zip(edges, (top, bottom, left, right)) if on]
    found = np.unique(np.concatenate(values)) if values else np.zeros(0, labels.dtype)
    return found[found > 0]


def clean_labels(labels: np.ndarray, min_size: int = 0, exclude_edges: bool = False,
                 borders=ALL_BORDERS) -> np.ndarray:
    """Drop objects under `min_size` pixels and, if `exclude_edges`, those touching the
    chosen `borders` (top, bottom, left, right) of the image; number the rest 1..N.

    labels: (Y, X) int, 0 = background. Returns int32 (Y, X); `labels` itself (unchanged)
    when there is nothing to do.
    """
    if min_size <= 1 and not exclude_edges:
        return labels
    if exclude_edges and labels.size:
        labels = np.where(np.isin(labels, border_labels(labels, borders)), 0, labels)
    return relabel(labels, min_size)
