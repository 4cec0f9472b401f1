import json

import pytest
import torch

from cellvit_cli.modeling import (VARIANTS, ModelConfig, ModelFolderError, activate, build_model,
                                  load_model_folder, save_model_folder)
from cellvit_cli.registry import HEADS, head_channels


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_encoder_features_have_known_strides_and_channels(variant):
    model = build_model(variant, HEADS)
    v, x = VARIANTS[variant], torch.randn(1, 1, 64, 96)
    features = model.encoder(x)
    assert len(features) == len(v.out_indices)
    for f in features:
        assert f.shape == (1, v.embed_dim, 64 // v.patch_size, 96 // v.patch_size)
    stem = model.stem(x)
    for i, (m, c) in enumerate(zip(stem, v.stem_channels)):
        stride = v.head_stride * 2**i
        assert m.shape == (1, c, 64 // stride, 96 // stride)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_gives_every_head_at_full_resolution(variant):
    model = build_model(variant, HEADS, in_channels=2, n_rays=16)
    out = model(torch.randn(2, 2, 48, 80))
    assert {h: tuple(o.shape) for h, o in out.items()} == {
        h: (2, head_channels(h, 16), 48, 80) for h in HEADS}


def test_every_parameter_gets_a_gradient():
    model = build_model("vit_nano_p16", HEADS)
    out = model(torch.randn(2, 1, 32, 32))
    sum(o.pow(2).mean() for o in out.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_position_embeddings_follow_the_token_grid():
    encoder = build_model("vit_nano_p16", ("star",)).encoder
    assert encoder.position_embedding((16, 16)) is encoder.pos_embed
    assert encoder.position_embedding((3, 7)).shape == (1, encoder.embed_dim, 3, 7)


def test_activate_gives_probabilities_and_nonnegative_rays():
    raw = {"star": torch.randn(1, 33, 8, 8) * 5, "flow": torch.randn(1, 3, 8, 8),
           "boundary": torch.randn(1, 2, 8, 8)}
    maps = activate(raw)
    assert 0 <= maps["star"][:, 0].min() and maps["star"][:, 0].max() <= 1
    assert maps["star"][:, 1:].min() >= 0
    assert torch.equal(maps["flow"][:, 1:], raw["flow"][:, 1:])
    assert 0 <= maps["boundary"].min() and maps["boundary"].max() <= 1


def test_save_then_load_gives_identical_outputs(tmp_path):
    model = build_model("vit_nano_p16", HEADS).eval()
    config = ModelConfig("vit_nano_p16", HEADS, median_diameter=12.5)
    save_model_folder(tmp_path / "m", model, config, {"default_mode": "star"})
    loaded = load_model_folder(tmp_path / "m")
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded.model(x)
    assert all(torch.equal(a[h], b[h]) for h in HEADS)
    assert loaded.config == config and loaded.thresholds == {"default_mode": "star"}
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "m").iterdir())


def test_half_precision_weights_load_into_float_model(tmp_path):
    model = build_model("vit_nano_p16", ("star",)).eval()
    save_model_folder(tmp_path, model, ModelConfig("vit_nano_p16", ("star",)), half=True)
    loaded = load_model_folder(tmp_path)
    assert next(loaded.model.parameters()).dtype == torch.float32
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x)["star"], loaded.model(x)["star"], atol=0.05, rtol=0.01)


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("changes, message", [
    ({"format_version": 99}, "model format 99"),
    ({"variant": "vit_huge_p14"}, "unknown to this cellvit-cli"),
    ({"heads": ["star", "mystery"]}, "unknown to this cellvit-cli"),
    ({"colour": "red"}, "unknown keys"),
    ({"n_rays": 16}, "weights do not fit"),
])
def test_incompatible_folder_fails_with_a_clear_message(tmp_path, changes, message):
    save_model_folder(tmp_path, build_model("vit_nano_p16", HEADS), ModelConfig("vit_nano_p16", HEADS))
    _edit_config(tmp_path, **changes)
    with pytest.raises(ModelFolderError, match=message):
        load_model_folder(tmp_path)


def test_unknown_model_name_lists_what_is_shipped():
    with pytest.raises(ModelFolderError, match="no model folder or shipped model"):
        load_model_folder("no_such_model_here")
