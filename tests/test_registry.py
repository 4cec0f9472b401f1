"""The head and mode registry: every entry is complete, and reading it stays light."""

import inspect
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import torch

from cellvit_cli.postprocess import DEFAULT_THRESHOLDS, cached_decoder, check_maps, decode
from cellvit_cli.registry import HEADS, MODES, Lazy, head_spec, mode_spec, resolve
from cellvit_cli.targets import make_targets

N_RAYS = 8
HEAVY = {"torch", "stardist", "cellpose"}


def heavy_modules_imported_by(module: str) -> list[str]:
    """The HEAVY modules that `import module` loads in a fresh interpreter."""
    code = f"import sys, {module}; print(*sorted({sorted(HEAVY)!r} & sys.modules.keys()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return done.stdout.split()


def test_the_registry_imports_no_heavy_library():
    assert heavy_modules_imported_by("cellvit_cli.registry") == []


def test_the_network_imports_no_target_or_decoding_library():
    assert heavy_modules_imported_by("cellvit_cli.modeling") == ["torch"]


@pytest.mark.parametrize("spec", [head_spec(h) for h in HEADS] + [mode_spec(m) for m in MODES],
                         ids=lambda spec: f"{type(spec).__name__}:{spec.name}")
def test_every_reference_resolves_to_a_function(spec):
    for field in fields(spec):
        ref = getattr(spec, field.name)
        if isinstance(ref, Lazy):
            assert callable(resolve(ref)), (spec.name, field.name, ref)


@pytest.fixture(scope="module")
def labels(nuclei):
    return nuclei[1][:128, :160]


@pytest.mark.parametrize("head", HEADS)
def test_every_head_has_targets_activation_and_loss(head, labels):
    spec = head_spec(head)
    channels = spec.channels(N_RAYS)
    assert len(spec.channel_names(N_RAYS)) == channels == len(spec.out_scale(N_RAYS))
    target = make_targets(labels, (head,), N_RAYS)[head]
    assert target.dtype == np.float32 and target.shape == (channels, *labels.shape)
    raw = torch.randn(2, channels, *labels.shape)
    maps = spec.activation(raw)
    assert maps.shape == raw.shape and torch.isfinite(maps).all()
    loss = spec.loss(raw, torch.from_numpy(target)[None].expand_as(raw))
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_names_its_heads_and_its_decoders_thresholds(mode):
    spec = mode_spec(mode)
    assert spec.heads and set(spec.heads) <= set(HEADS)
    keywords = list(inspect.signature(resolve(spec.decoder)).parameters)[1:]
    assert keywords == list(spec.defaults) == list(DEFAULT_THRESHOLDS[mode])
    assert set(spec.coarse_grid) <= set(spec.fine_steps) == set(spec.defaults)
    if spec.tuned_after:
        assert set(mode_spec(spec.tuned_after).defaults) <= set(spec.defaults)


@pytest.mark.parametrize("mode", MODES)
def test_the_cached_decoder_decodes_as_decode(mode, labels):
    maps = check_maps(make_targets(labels, HEADS, N_RAYS), mode)
    defaults = DEFAULT_THRESHOLDS[mode]
    first = next(iter(defaults))
    settings = [defaults, {**defaults, first: defaults[first] + 0.2}]
    decoder = cached_decoder(maps, mode, settings)
    for th in settings:
        assert np.array_equal(decoder(th), decode(maps, mode, {mode: th}))


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown head 'mystery': choose from"):
        head_spec("mystery")
    with pytest.raises(ValueError, match="unknown mode 'watershed': choose from"):
        mode_spec("watershed")
