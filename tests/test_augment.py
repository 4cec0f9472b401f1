"""The intensity and crop augmentations aimed at model v2's failures (issue 12), on the real
StarDist sample nuclei: dim objects beside bright ones, background ramps, blur, noise
levels, crops over-sampling crowded regions."""

import numpy as np
import pytest

from cellvit_cli.preprocess import normalize_percentile
from cellvit_cli.samples import load_nuclei_sample
from cellvit_cli.targets import clean_labels
from cellvit_cli.settings import AUGMENTATIONS
from cellvit_cli.training.augment import (AugmentConfig, background_ramp,
                                          contact_points, jitter_intensity, random_crop,
                                          random_geometry, scale_objects, window_around)
from cellvit_cli.training.data import Sample

HEADS = ("star", "boundary")


@pytest.fixture(scope="module")
def sample():
    image, labels = load_nuclei_sample()
    return Sample("n", normalize_percentile(image[None, :256, :256]), clean_labels(labels[:256, :256]))


def test_each_object_gets_its_own_gain_and_the_background_stays(sample):
    rng = np.random.default_rng(0)
    scaled = scale_objects(sample.image, sample.labels, (0.2, 1.0), rng)
    far = np.ones_like(sample.labels, bool)
    far[np.nonzero(sample.labels)] = False
    from scipy import ndimage as ndi
    far = ndi.binary_erosion(far, iterations=9)  # past the glow and the smoothing
    np.testing.assert_allclose(scaled[0][far], sample.image[0][far], rtol=1e-3, atol=1e-5)
    background = np.median(sample.image[0][sample.labels == 0])
    ratios = []
    for i in range(1, sample.labels.max() + 1):
        core = ndi.binary_erosion(sample.labels == i, iterations=3)
        contrast = sample.image[0][core] - background
        if core.sum() > 20 and contrast.mean() > 0.1:
            ratios.append(np.median((scaled[0][core] - background) / contrast))
    ratios = np.array(ratios)
    assert ratios.min() > 0.19 and ratios.max() < 1.01 and ratios.std() > 0.1


def test_background_ramp_is_linear_and_within_its_amplitude():
    ramp = background_ramp((64, 80), 0.3, np.random.default_rng(3))
    assert ramp.shape == (64, 80) and 0.0 in (ramp.min(), ramp.max())
    assert 0 < np.abs(ramp).max() <= 0.3 * np.sqrt(2)
    second_differences = np.diff(ramp, 2, axis=0), np.diff(ramp, 2, axis=1)
    assert all(np.abs(d).max() < 1e-5 for d in second_differences)


def test_contact_points_lie_where_two_objects_touch(sample):
    points = contact_points(sample.labels)
    assert len(points) > 30
    labels = np.pad(sample.labels, 1)
    for y, x in points + 1:
        around = labels[y - 1:y + 2, x - 1:x + 2]
        assert len(set(np.unique(around)) - {0}) >= 2


def test_window_around_holds_its_centre_and_stays_inside():
    for centre in ((0, 0), (100, 5), (255, 255), (128, 128)):
        ys, xs = window_around((256, 256), 96, np.array(centre))
        assert ys.start <= centre[0] < ys.stop and xs.start <= centre[1] < xs.stop
        assert 0 <= ys.start and ys.stop <= 256 and 0 <= xs.start and xs.stop <= 256


def test_crowded_crops_are_centred_on_contacts(sample):
    cfg = AugmentConfig(crowded_fraction=1.0, scale_range=(1.0, 1.0))
    contacts = contact_points(sample.labels)
    rng = np.random.default_rng(1)
    for _ in range(10):
        window = random_geometry(sample.labels.shape, cfg, rng, contacts).window
        inside = ((contacts[:, 0] >= window[0].start) & (contacts[:, 0] < window[0].stop)
                  & (contacts[:, 1] >= window[1].start) & (contacts[:, 1] < window[1].stop))
        assert inside.any()


def test_robust_augment_keeps_targets_and_varies_the_image(sample):
    rng = np.random.default_rng(0)
    images = []
    for _ in range(6):
        image, targets = random_crop(sample, HEADS, 32, AUGMENTATIONS["robust"], rng)
        assert image.shape == (1, 128, 128) and np.isfinite(image).all()
        assert targets["star"].shape == (33, 128, 128) and targets["boundary"].shape == (2, 128, 128)
        images.append(image)
    assert sample.contacts is not None  # filled on first use
    assert np.std([im.std() for im in images]) > 0.01


def test_blur_and_noise_levels_follow_the_config():
    image = np.zeros((1, 64, 64), np.float32)
    image[0, 32, 32] = 1.0
    flat = AugmentConfig(gain_range=(1, 1), offset_range=(0, 0), gamma_range=(1, 1),
                         noise_std=0.0)
    np.testing.assert_array_equal(jitter_intensity(image, flat, np.random.default_rng(0)), image)
    blurred = AugmentConfig(**{**flat.__dict__, "blur_sigma_max": 2.0, "blur_prob": 1.0})
    out = jitter_intensity(image, blurred, np.random.default_rng(0))
    assert out.max() < 1.0 and abs(out.sum() - 1.0) < 1e-3
    noisy = AugmentConfig(**{**flat.__dict__, "noise_std_range": (0.05, 0.05)})
    assert abs(jitter_intensity(image, noisy, np.random.default_rng(0)).std() - 0.05) < 0.005
