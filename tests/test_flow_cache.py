"""The flow targets of training masks are computed once and then read from the cache."""

import numpy as np
import pytest
import tifffile

from cellvit_cli.targets import clean_labels
from cellvit_cli.targets.flow import flow_targets
from cellvit_cli.training.data import load_samples, pair_files


@pytest.fixture
def pairs(tmp_path, nuclei):
    """Two real 128 x 128 images with their masks: [(image, mask)]."""
    image, labels = nuclei
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i, (y, x) in enumerate([(0, 0), (200, 300)]):
        window = (slice(y, y + 128), slice(x, x + 128))
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", image[window])
        tifffile.imwrite(tmp_path / "masks" / f"n{i}.tif", labels[window].astype(np.uint16))
    return pair_files(tmp_path / "images", tmp_path / "masks")


def _load(pairs, cache):
    return load_samples(pairs, 1, ("flow",), cache, progress=False)


def test_a_second_load_reads_the_flows_from_the_cache(pairs, tmp_path):
    cache = tmp_path / "cache"
    first = _load(pairs, cache)
    files = sorted(cache.iterdir())
    assert len(files) == 2  # one file per mask
    for sample in first:
        truth = flow_targets(clean_labels(sample.labels))[1:].astype(np.float16)
        assert sample.flows.dtype == np.float16 and np.array_equal(sample.flows, truth)
        assert any(np.array_equal(np.load(f), sample.flows) for f in files)
    marked = [np.full_like(np.load(f), i + 1) for i, f in enumerate(files)]
    for f, values in zip(files, marked):
        np.save(f, values)  # flows no computation gives: only a read returns them
    second = _load(pairs, cache)
    assert sorted(float(s.flows.flat[0]) for s in second) == [1.0, 2.0]
    assert sorted(cache.iterdir()) == files  # nothing new written


def test_changed_masks_get_their_own_cache_file(pairs, tmp_path):
    cache = tmp_path / "cache"
    _load(pairs[:1], cache)
    mask = pairs[0][1]
    labels = tifffile.imread(mask)
    tifffile.imwrite(mask, np.where(labels == labels.max(), 0, labels).astype(np.uint16))
    changed, = _load(pairs[:1], cache)
    assert len(list(cache.iterdir())) == 2
    assert np.array_equal(changed.flows,
                          flow_targets(changed.labels)[1:].astype(np.float16))


def test_without_a_cache_folder_nothing_is_written(pairs, tmp_path):
    before = sorted(tmp_path.rglob("*"))
    sample, _ = _load(pairs, None)
    assert sample.flows.shape == (2, 128, 128)
    assert sorted(tmp_path.rglob("*")) == before
