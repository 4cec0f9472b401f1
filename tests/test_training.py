import json

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from cellvit_cli import __version__
from cellvit_cli.cli import main
from cellvit_cli.modeling.folder import DEFAULT_MODEL, models_dir
from cellvit_cli.preprocess import PERCENTILES, normalize_percentile
from cellvit_cli.targets import clean_labels
from cellvit_cli.targets.flow import flow_targets
from cellvit_cli.targets.star import star_targets
from cellvit_cli.training.augment import (MARGIN, AugmentConfig, CropGeometry, crop_at, dihedral,
                                          dihedral_flows, random_crop)
from cellvit_cli.training.data import Sample, load_samples, pair_files
from cellvit_cli.training.finish import CARD_MARK, write_card
from cellvit_cli.training.loop import Trainer, TrainConfig
from conftest import save_packed_cells_model


def quarters(array):
    h, w = array.shape[0] // 2, array.shape[1] // 2
    return [array[y:y + h, x:x + w] for y in (0, h) for x in (0, w)]


@pytest.fixture
def folders(tmp_path, nuclei):
    """The stardist sample cut into 4 real 256x256 images with their masks."""
    image, labels = nuclei
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    for i, (img, lbl) in enumerate(zip(quarters(image), quarters(labels))):
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", img)
        tifffile.imwrite(tmp_path / "masks" / f"n{i}.tif", lbl.astype(np.uint16))
    return tmp_path / "images", tmp_path / "masks"


@pytest.fixture
def sample(nuclei):
    image, labels = nuclei
    labels = clean_labels(labels)
    return Sample("n", normalize_percentile(image[None]), labels,
                  flow_targets(labels)[1:].astype(np.float16))


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_dihedral_flows_equal_flows_of_transformed_labels(nuclei, k, flip):
    labels = clean_labels(nuclei[1])
    moved = dihedral_flows(flow_targets(labels)[1:], k, flip)
    truth = flow_targets(np.ascontiguousarray(dihedral(labels, k, flip)))[1:]
    close = np.abs(moved - truth).max(axis=0) < 1e-4
    # cellpose picks each cell's centre as the pixel nearest its mean: ties may move it
    assert close[labels > 0].mean() > 0.99


def test_crops_have_consistent_image_and_targets(sample):
    cfg = AugmentConfig(crop_size=96)
    rng = np.random.default_rng(0)
    for _ in range(5):
        image, targets = random_crop(sample, ("star", "flow", "boundary"), 32, cfg, rng)
        assert image.shape == (1, 96, 96) and image.dtype == np.float32
        fg = targets["boundary"][0] > 0
        assert np.array_equal(fg, targets["flow"][0] > 0)
        assert np.array_equal(fg, targets["star"][0] > 0)
        assert np.all(targets["star"][1:][:, ~fg] == 0)


def test_star_targets_of_a_crop_see_objects_beyond_its_edge(sample):
    """Rays of objects cut by the crop keep their true length (the crop has a margin)."""
    from scipy import ndimage as ndi

    y0, x0, crop = 0, 20, 64  # three objects cut by this crop lie inside its margin
    size = crop + 2 * MARGIN
    window = (slice(y0, y0 + size), slice(x0, x0 + size))
    _, targets, _ = crop_at(sample, CropGeometry(window, 0, False, 1.0), ("star",), 32, crop)
    inner = (slice(y0 + MARGIN, y0 + MARGIN + crop), slice(x0 + MARGIN, x0 + MARGIN + crop))
    full = star_targets(sample.labels)[(slice(None), *inner)]
    labels = sample.labels[inner]
    inside = [i for i, box in enumerate(ndi.find_objects(sample.labels), 1) if box is not None
              and all(b.start >= w.start and b.stop <= w.stop for b, w in zip(box, window))]
    fits = np.isin(labels, inside) & (labels > 0)
    cut = fits & np.isin(labels, np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    assert cut.any()  # some objects are cut by the crop's edge
    assert np.allclose(targets["star"][:, fits], full[:, fits])


def test_rotated_crop_has_the_targets_of_rotated_labels(sample):
    crop, size = 64, 64 + 2 * MARGIN
    window = (slice(60, 60 + size), slice(200, 200 + size))
    for k, flip in [(1, False), (2, True), (3, True)]:
        _, targets, _ = crop_at(sample, CropGeometry(window, k, flip, 1.0), ("star", "boundary"), 32, crop)
        moved = np.ascontiguousarray(dihedral(sample.labels[window], k, flip))
        inner = (slice(None), slice(MARGIN, MARGIN + crop), slice(MARGIN, MARGIN + crop))
        assert np.allclose(targets["star"], star_targets(moved)[inner])


def test_pairing_names_images_without_masks(folders, tmp_path):
    images, masks = folders
    (masks / "n3.tif").unlink()
    with pytest.raises(ValueError, match="no mask for image.*n3.tif"):
        pair_files(images, masks)


def test_pairing_skips_hidden_files(folders):
    """macOS `._name.tif` files are not images and have no masks."""
    images, masks = folders
    (images / "._n0.tif").write_bytes(b"\x00\x05\x16\x07")
    assert [i.name for i, _ in pair_files(images, masks)] == [f"n{i}.tif" for i in range(4)]


def test_mismatched_shapes_and_binary_masks_are_refused(folders):
    images, masks = folders
    tifffile.imwrite(masks / "n0.tif", np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError, match="n0.tif: mask shape"):
        load_samples(pair_files(images, masks), 1, ("star",), progress=False)
    binary = (tifffile.imread(masks / "n1.tif") > 0).astype(np.uint16)
    tifffile.imwrite(masks / "n0.tif", binary)
    with pytest.raises(ValueError, match="binary mask"):
        load_samples(pair_files(images, masks), 1, ("star",), progress=False)


def test_empty_masks_warn(folders):
    images, masks = folders
    tifffile.imwrite(masks / "n0.tif", np.zeros((256, 256), np.uint16))
    with pytest.warns(UserWarning, match="n0.tif: no objects"):
        load_samples(pair_files(images, masks)[:1], 1, ("star",), progress=False)


def _trainer(samples, out, **changes):
    cfg = TrainConfig(variant="vit_nano_p16", epochs=1, steps_per_epoch=3, batch_size=2,
                      augment=AugmentConfig(crop_size=64), warmup_steps=1, device="cpu", **changes)
    return Trainer(samples, [], out, cfg)


def test_training_is_deterministic_with_a_seed(sample, tmp_path):
    losses = []
    for run in ("a", "b"):
        trainer = _trainer([sample], tmp_path / run)
        losses.append(trainer.train_epoch(progress=False))
    assert losses[0] == losses[1]


def test_resume_continues_where_it_stopped(sample, tmp_path):
    trainer = _trainer([sample], tmp_path, )
    trainer.cfg.epochs = 2
    trainer.out_dir.mkdir(exist_ok=True)
    trainer.train_epoch(progress=False)
    trainer.state.epoch = 1
    trainer.save_checkpoint()
    resumed = _trainer([sample], tmp_path)
    resumed.load_checkpoint()
    assert resumed.state.step == 3 and resumed.state.epoch == 1
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(),
                                                 resumed.model.state_dict().values()))


@pytest.mark.slow
def test_tiny_model_loss_falls_on_real_nuclei(sample, tmp_path):
    torch.manual_seed(0)
    trainer = _trainer([sample], tmp_path, lr=2e-3)
    trainer.cfg.epochs, trainer.steps_per_epoch = 2, 60  # the schedule spans both epochs
    first = trainer.train_epoch(progress=False)["loss"]
    last = trainer.train_epoch(progress=False)["loss"]
    assert last < 0.7 * first


def test_train_cli_writes_a_complete_model_folder(folders, tmp_path):
    """One head: an untrained model's star maps make NMS quadratic (tested in test_tune)."""
    images, masks = folders
    out = tmp_path / "model"
    result = CliRunner().invoke(main, [
        "train", "--images", str(images), "--masks", str(masks), "--val-fraction", "0.25",
        "--variant", "vit_nano_p16", "--heads", "boundary", "--epochs", "2", "--steps-per-epoch", "2",
        "--batch-size", "2", "--crop-size", "64", "--device", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("config.json", "weights.pt", "thresholds.json", "train_log.csv",
                 "training_curves.png", "checkpoint.pt", "README.md", "train_config.json"):
        assert (out / name).is_file(), name
    from cellvit_cli.modeling import load_model_folder
    loaded = load_model_folder(out)
    assert loaded.config.median_diameter > 0 and loaded.config.percentiles == PERCENTILES
    card = (out / "README.md").read_text()
    summary = json.loads((out / "train_summary.json").read_text())
    assert card.startswith(CARD_MARK) and "# model" in card
    for text in ("`vit_nano_p16`", "| heads | boundary |", f"3 image(s) of `{images}`",
                 "1 image(s) held out", "2 epoch(s), 4 steps of 2 crops of 64 px",
                 f"epoch {summary['best_epoch']}", "| boundary | ", "fg_thresh",
                 f"cellvit-cli {__version__}"):
        assert text in card, text
    assert (summary["train_images"], summary["val_images"]) == (3, 1)


def test_train_keeps_a_hand_written_card(tmp_path):
    """Only a card `cellvit train` wrote is replaced: a hand-written one (as the shipped
    model's) stays."""
    shipped = models_dir() / DEFAULT_MODEL / "README.md"
    (tmp_path / "README.md").write_text(shipped.read_text())
    assert not write_card(tmp_path, CARD_MARK + "\n# new\n")
    assert (tmp_path / "README.md").read_text() == shipped.read_text()
    (tmp_path / "README.md").write_text(CARD_MARK + "\n# an earlier run\n")
    assert write_card(tmp_path, CARD_MARK + "\n# new\n")
    assert (tmp_path / "README.md").read_text().endswith("# new\n")


def _train(images, masks, out, *extra):
    return CliRunner().invoke(main, [
        "train", "--images", str(images), "--masks", str(masks), "--variant", "vit_nano_p16",
        "--heads", "boundary", "--steps-per-epoch", "1", "--batch-size", "1", "--crop-size",
        "64", "--device", "cpu", "-o", str(out), *map(str, extra)])


def test_train_cli_resume_continues_and_keeps_the_run_record(folders, tmp_path):
    images, masks = folders
    out = tmp_path / "model"
    assert _train(images, masks, out, "--epochs", "1").exit_code == 0
    record = json.loads((out / "train_config.json").read_text())
    result = _train(images, masks, out, "--epochs", "2", "--val-every", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "trained 2 epoch(s), 2 steps" in result.output
    resumed = json.loads((out / "train_config.json").read_text())
    assert resumed["config"] == record["config"] and resumed["pairs"] == record["pairs"]
    assert record["resumes"] == [] and len(resumed["resumes"]) == 1
    entry = resumed["resumes"][0]
    assert (entry["epoch"], entry["step"]) == (1, 1)
    assert entry["changed"] == {"epochs": [1, 2], "val_every": [1, 2]}
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["train_config"]["epochs"] == 2 and payload["train_config"]["heads"] == (
        "boundary",)


def test_train_cli_resume_with_other_settings_is_one_line_error(folders, tmp_path):
    images, masks = folders
    out = tmp_path / "model"
    assert _train(images, masks, out, "--epochs", "1").exit_code == 0
    before = (out / "train_config.json").read_text()
    result = _train(images, masks, out, "--epochs", "2", "--lr", "0.001", "--crop-size", "96",
                    "--resume")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    line = errors[0]
    assert str(out / "checkpoint.pt") in line and "epochs" not in line
    assert "lr 0.0005 (this run: 0.001)" in line and "augment.crop_size 64 (this run: 96)" in line
    assert (out / "train_config.json").read_text() == before


def test_train_cli_resume_takes_the_settings_not_given_from_the_checkpoint(folders, tmp_path):
    """`train --resume` with only the data options and -o: the variant, heads, crops,
    augmentation, batch, steps, lr and epochs are the checkpoint's, not the defaults."""
    images, masks = folders
    out = tmp_path / "model"
    first = _train(images, masks, out, "--epochs", "2", "--lr", "0.001", "--augment", "robust",
                   "--norm-percentiles", "2", "99", "--time-budget", "60")
    assert first.exit_code == 0, first.output
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    payload["state"]["epoch"], payload["state"]["step"] = 1, 1  # as if stopped after epoch 1
    torch.save(payload, out / "checkpoint.pt")
    result = CliRunner().invoke(main, ["train", "--images", str(images), "--masks", str(masks),
                                       "-o", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert "trained 2 epoch(s), 2 steps" in result.output
    config = torch.load(out / "checkpoint.pt", weights_only=True)["train_config"]
    assert config == payload["train_config"]
    assert config["variant"] == "vit_nano_p16" and config["lr"] == 0.001
    assert config["augment"]["crop_size"] == 64 and config["augment"]["blur_sigma_max"] == 1.5


def test_train_cli_refuses_masks_missing_for_images(folders, tmp_path):
    images, masks = folders
    (masks / "n2.tif").unlink()
    result = CliRunner().invoke(main, ["train", "--images", str(images), "--masks", str(masks),
                                       "-o", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "no mask for image(s) n2.tif" in result.output


def test_train_cli_takes_multichannel_images(folders, tmp_path):
    """Two real channels (the image and its inverse), channel-first, train a 2-channel model."""
    images, masks = folders
    for path in images.iterdir():
        image = tifffile.imread(path)
        tifffile.imwrite(path, np.stack([image, image.max() - image]))
    out = tmp_path / "model2"
    result = CliRunner().invoke(main, [
        "train", "--images", str(images), "--masks", str(masks), "--in-channels", "2",
        "--variant", "vit_nano_p16", "--heads", "boundary", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "2", "--crop-size", "64", "--device", "cpu",
        "-o", str(out)])
    assert result.exit_code == 0, result.output
    from cellvit_cli.modeling import load_model_folder
    loaded = load_model_folder(out)
    assert loaded.config.in_channels == 2
    assert loaded.model.encoder.patch_embed.in_channels == 2


def test_train_cli_init_starts_from_a_model_and_refuses_a_foreign_variant(folders, tmp_path):
    """--init: with a learning rate too small to move anything, the fine-tuned weights are
    the starting model's (a model whose star head was set by hand, see conftest), a head it
    lacks starts untrained (and the log says so); a variant that shares no weight is a
    one-line error."""
    from cellvit_cli.modeling import load_model_folder

    images, masks = folders
    packed = save_packed_cells_model(tmp_path / "packed", heads=("star", "boundary"))
    tuned = tmp_path / "tuned"
    result = CliRunner().invoke(main, [
        "train", "--images", str(images), "--masks", str(masks), "--variant", "vit_tiny_p16",
        "--heads", "star,flow", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1",
        "--crop-size", "64", "--device", "cpu", "--lr", "1e-12", "--init", str(packed),
        "-o", str(tuned)])
    assert result.exit_code == 0, result.output
    assert f"starting from the weights of {packed}; untrained head(s): flow" in result.output
    start, end = (dict(load_model_folder(f).model.named_parameters()) for f in (packed, tuned))
    shared = [k for k in end if not k.startswith("heads.flow.")]
    assert len(shared) > 50 and all(torch.allclose(start[k], end[k], atol=1e-6) for k in shared)
    record = json.loads((tuned / "train_config.json").read_text())
    assert record["request"]["init_model"] == str(packed)
    assert f"| started from | the weights of `{packed}` (fine-tuned) |" in (
        tuned / "README.md").read_text()
    result = _train(images, masks, tmp_path / "other", "--epochs", "1", "--init", DEFAULT_MODEL)
    assert result.exit_code == 1
    assert ("cannot start from this model: variant 'vit_tiny_p16_s2' shares no weights with "
            "'vit_nano_p16'" in result.output)


def test_train_cli_init_from_another_variant_loads_the_shared_tensors(folders, tmp_path):
    """--init model v2 into the lighter vit_tiny_p16_s4_d6: every tensor they share by name
    and shape is v2's (the first six blocks among them), the rest start untrained and the
    log counts them."""
    from cellvit_cli.modeling import load_model_folder

    images, masks = folders
    out = tmp_path / "warm"
    result = CliRunner().invoke(main, [
        "train", "--images", str(images), "--masks", str(masks), "--variant",
        "vit_tiny_p16_s4_d6", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1",
        "--crop-size", "64", "--device", "cpu", "--lr", "1e-12", "--init", DEFAULT_MODEL,
        "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "49 of 143 tensors untrained (from variant 'vit_tiny_p16_s2')" in result.output
    start, end = (load_model_folder(f).model.state_dict() for f in (DEFAULT_MODEL, out))
    shared = [k for k in end if k in start and start[k].shape == end[k].shape]
    assert len(shared) == 94 and "encoder.blocks.5.attn.qkv.weight" in shared
    assert all(torch.allclose(start[k].float(), end[k].float(), atol=1e-6) for k in shared
               if "running" not in k and "num_batches" not in k)


def test_train_cli_robust_augmentation_is_recorded(folders, tmp_path):
    images, masks = folders
    out = tmp_path / "model"
    assert _train(images, masks, out, "--epochs", "1", "--augment", "robust").exit_code == 0
    augment = json.loads((out / "train_config.json").read_text())["config"]["augment"]
    assert augment["object_gain_range"] == [0.15, 1.0] and augment["crop_size"] == 64


def test_train_cli_norm_percentiles_reach_the_samples_and_the_model_folder(folders, tmp_path):
    """--norm-percentiles: the training images are normalised between them (a real image's
    0.5 and 99 percentiles map to 0 and 1) and config.json keeps them for segment; a bad
    pair is a usage error naming the option."""
    from cellvit_cli.modeling import load_model_folder
    from cellvit_cli.training.data import load_sample

    images, masks = folders
    image, mask = sorted(images.iterdir())[0], sorted(masks.iterdir())[0]
    sample = load_sample(image, mask, 1, False, None, (0.5, 99.0))
    low, high = np.percentile(sample.image, (0.5, 99.0))
    assert abs(low) < 1e-3 and abs(high - 1) < 1e-3
    out = tmp_path / "model"
    result = _train(images, masks, out, "--epochs", "1", "--norm-percentiles", "0.5", "99")
    assert result.exit_code == 0, result.output
    assert load_model_folder(out).config.percentiles == (0.5, 99.0)
    bad = _train(images, masks, tmp_path / "bad", "--norm-percentiles", "99", "1")
    assert bad.exit_code == 2 and "'--norm-percentiles'" in bad.output
    assert "0 <= LOW < HIGH <= 100" in bad.output


def test_train_cli_init_takes_the_models_variant_and_normalisation_unless_given(folders,
                                                                               tmp_path):
    """--init without --variant or --norm-percentiles fine-tunes the model as it is (its
    variant, its percentiles); given ones are kept (and a variant that differs is refused,
    as above); a name that is no model is a usage error naming --init."""
    from cellvit_cli.modeling import load_model_folder

    images, masks = folders
    packed = save_packed_cells_model(tmp_path / "packed")
    config = json.loads((packed / "config.json").read_text())
    config["normalization"]["percentiles"] = [0.5, 99.5]
    (packed / "config.json").write_text(json.dumps(config))
    args = ["train", "--images", str(images), "--masks", str(masks), "--heads", "star,boundary",
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "1", "--crop-size", "64",
            "--device", "cpu", "--lr", "1e-12", "--init", str(packed)]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "tuned")])
    assert result.exit_code == 0, result.output
    tuned = load_model_folder(tmp_path / "tuned").config
    assert (tuned.variant, tuned.percentiles) == ("vit_tiny_p16", (0.5, 99.5))
    result = CliRunner().invoke(main, [*args, "--norm-percentiles", "1", "99",
                                       "-o", str(tmp_path / "given")])
    assert result.exit_code == 0, result.output
    assert load_model_folder(tmp_path / "given").config.percentiles == (1.0, 99.0)
    result = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "nothing"),
                                       "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'--init'" in result.output
    assert "no model folder or shipped model of that name" in result.output
