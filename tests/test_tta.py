"""Test-time augmentation turns maps back exactly: real star and flow targets of a rotated
or flipped label image, turned back, are the targets of the label image itself; and the
averaged prediction of a random network is exactly equivariant."""

import numpy as np
import pytest
import torch

from cellvit_cli.inference.tta import (DIHEDRAL, TTANetwork, transform, turn_back_flows,
                                       turn_back_rays, turns_for, untransform)
from cellvit_cli.samples import load_nuclei_sample
from cellvit_cli.targets import clean_labels
from cellvit_cli.targets.star import star_targets
from cellvit_cli.training.augment import dihedral, dihedral_flows


@pytest.fixture(scope="module")
def labels():
    _, labels = load_nuclei_sample()
    return clean_labels(labels[:96, :96])


def _back(array: np.ndarray, k: int, flip: bool, turn) -> np.ndarray:
    moved = untransform(torch.from_numpy(np.ascontiguousarray(array))[None], k, flip)
    return turn(moved, k, flip)[0].numpy()


@pytest.mark.parametrize("k, flip", DIHEDRAL)
def test_star_rays_of_a_transformed_image_turn_back_to_the_original(labels, k, flip):
    original = star_targets(labels, 32)
    turned = star_targets(np.ascontiguousarray(dihedral(labels, k, flip)), 32)
    back = _back(turned, k, flip, turn_back_rays)
    inside = labels > 0
    assert np.abs(back[0] - original[0]).max() < 1e-5
    assert np.median(np.abs(back[1:, inside] - original[1:, inside])) < 1e-3
    assert np.abs(back[1:, inside] - original[1:, inside]).mean() < 0.05  # px


@pytest.mark.parametrize("k, flip", DIHEDRAL)
def test_flows_of_a_transformed_image_turn_back_to_the_original(labels, k, flip):
    rng = np.random.default_rng(k)
    flows = rng.normal(size=(2, 40, 40)).astype(np.float32)
    maps = np.concatenate([rng.random((1, 40, 40), np.float32), flows])
    turned = np.concatenate([dihedral(maps[:1], k, flip), dihedral_flows(maps[1:], k, flip)])
    np.testing.assert_allclose(_back(turned, k, flip, turn_back_flows), maps, atol=1e-6)


def test_rays_that_do_not_divide_into_quarters_use_fewer_transforms():
    assert turns_for({"star": 33, "flow": 3}) == DIHEDRAL
    assert turns_for({"boundary": 2}) == DIHEDRAL
    assert turns_for({"star": 31}) == ((0, False), (2, False), (0, True), (2, True))
    assert turns_for({"star": 32}) == ((0, False),)


def test_averaged_prediction_of_a_random_network_is_equivariant():
    from cellvit_cli.inference.predictor import DenseNetwork
    from cellvit_cli.modeling import build_model

    torch.manual_seed(0)
    network = TTANetwork(DenseNetwork(build_model("vit_nano_p16", ("star", "flow", "boundary")
                                                  ).eval(), ("star", "flow", "boundary")))
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        plain = network(x)
        for k, flip in ((1, False), (0, True), (3, True)):
            moved = network(transform(x, k, flip))
            back = {"star": turn_back_rays(untransform(moved["star"], k, flip), k, flip),
                    "flow": turn_back_flows(untransform(moved["flow"], k, flip), k, flip),
                    "boundary": untransform(moved["boundary"], k, flip)}
            for head in plain:
                torch.testing.assert_close(back[head], plain[head], atol=1e-4, rtol=1e-4)


def test_segment_with_tta_finds_the_sample_nuclei_and_records_it(tmp_path):
    """End to end on the shipped model and the real sample: --tta labels agree with the
    plain ones (F1 at IoU 0.5 >= 0.9) and the fingerprint says tta, so a rerun redoes."""
    import tifffile
    from click.testing import CliRunner

    from cellvit_cli import metrics
    from cellvit_cli.cli import main
    from cellvit_cli.io import read_label_metadata, read_labels

    image, _ = load_nuclei_sample()
    tifffile.imwrite(tmp_path / "n.tif", image[:256, :256])
    run = ["segment", str(tmp_path / "n.tif"), "--diameter", "20", "--precision", "fp32"]
    assert CliRunner().invoke(main, [*run, "-o", str(tmp_path / "plain")]).exit_code == 0
    result = CliRunner().invoke(main, [*run, "-o", str(tmp_path / "tta"), "--tta"])
    assert result.exit_code == 0, result.output
    plain = read_labels(tmp_path / "plain" / "n_labels.tif")
    tta = read_labels(tmp_path / "tta" / "n_labels.tif")
    counts = metrics.match_counts(metrics.label_overlap(plain, tta), (0.5,))[0]
    assert plain.max() > 20 and metrics.scores(counts)["f1"] >= 0.9
    assert read_label_metadata(tmp_path / "tta" / "n_labels.tif")["settings"]["tta"] is True
    again = CliRunner().invoke(main, [*run, "-o", str(tmp_path / "tta")])
    assert "settings changed (tta): redoing" in again.output
