"""Helpers shared by the tests and the benchmarks (not a test module; no fixtures).

Tests import it as `helpers` (pytest puts tests/ on sys.path, as for conftest); scripts
under benchmarks/ add the repository root to sys.path and import `tests.helpers`.
"""

import numpy as np
from scipy import ndimage as ndi


def degrade(maps: dict[str, np.ndarray], sigma: float = 1.0, noise: float = 0.05,
            scale: float = 0.8, seed: int = 0) -> dict[str, np.ndarray]:
    """Training targets made to look predicted: {head: (C, Y, X) float32}.

    Each map is blurred (Gaussian, `sigma` px, per channel) and given additive Gaussian
    noise (sd `noise`); channel 0 (the probability) is multiplied by `scale` and clipped
    to [0, 1], and so is the boundary head's channel 1. Same seed, same maps.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for head, m in maps.items():
        m = ndi.gaussian_filter(m, (0, sigma, sigma)) + rng.normal(0, noise, m.shape)
        m[0] = np.clip(m[0] * scale, 0, 1)
        if head == "boundary":
            m[1] = np.clip(m[1], 0, 1)
        out[head] = m.astype(np.float32)
    return out
