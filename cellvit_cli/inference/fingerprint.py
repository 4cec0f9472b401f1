"""What decides an image's labels (model files and settings), stored in its labels TIFF so
that a rerun with other settings redoes the image instead of skipping it."""

import hashlib
import json
from dataclasses import MISSING, fields
from pathlib import Path

# SegmentSettings fields that do not change the labels (model: its files are hashed instead)
_IGNORED = {"model", "batch_size", "device", "overwrite", "roi", "geojson", "overlay",
            "measure", "save_maps", "zarr", "recursive", "pattern", "workers", "progress"}
_MODEL_FILES = ("config.json", "thresholds.json")
_WEIGHTS = "weights.pt"


def settings_fingerprint(settings, model_folder: Path) -> dict:
    """{name: value} (JSON-able) of what decides the labels: the model folder, a digest of
    its config.json, thresholds.json and weights.pt (size and mtime), and every setting of
    `settings` (a SegmentSettings) that changes the labels (mode, diameter, scale, channel,
    tile size, overlap, block mode, thresholds...). Percentiles left to the model are
    recorded as the model's, so that giving the same ones by hand changes nothing."""
    found = {"model_folder": str(Path(model_folder).resolve()),
             "model_digest": model_digest(Path(model_folder))}
    for f in fields(settings):
        if f.name not in _IGNORED:
            found[f.name] = getattr(settings, f.name)
    if found.get("norm_percentiles") is None:
        found["norm_percentiles"] = model_percentiles(Path(model_folder))
    return json.loads(json.dumps(found, default=str))


def model_percentiles(folder: Path) -> list[float] | None:
    """The normalisation percentiles in a model folder's config.json (None if unreadable)."""
    try:
        return list(json.loads((folder / "config.json").read_text())["normalization"]["percentiles"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def model_digest(folder: Path) -> str:
    """A short hash of a model folder's config.json and thresholds.json (content) and
    weights.pt (size and mtime); files that are missing count as empty."""
    digest = hashlib.sha256()
    for name in _MODEL_FILES:
        try:
            digest.update((folder / name).read_bytes())
        except OSError:
            pass
        digest.update(b"\0")
    try:
        stat = (folder / _WEIGHTS).stat()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    except OSError:
        pass
    return digest.hexdigest()[:16]


def changed_settings(stored: dict, current: dict) -> list[str]:
    """Names whose value in `current` differs from `stored` (a fingerprint read back); a
    setting that `stored` lacks (written before it existed) counts as its default."""
    from cellvit_cli.inference.segmenter import SegmentSettings

    defaults = {f.name: f.default for f in fields(SegmentSettings) if f.default is not MISSING}
    defaults = json.loads(json.dumps(defaults, default=str))
    return [name for name, value in current.items()
            if stored.get(name, defaults.get(name, MISSING)) != value]


def run_fingerprint(settings, model=None) -> dict:
    """`settings_fingerprint` of a run with `model`: a Segmenter (its own settings apply), a
    LoadedModel, a model folder or shipped name (None: settings.model, else the default
    model). A folder or name is checked without loading the weights: ModelFolderError
    when it is unknown, its config.json or thresholds.json is damaged or weights.pt missing."""
    from cellvit_cli.inference.segmenter import Segmenter
    from cellvit_cli.modeling import LoadedModel
    from cellvit_cli.modeling.folder import (ModelFolderError, read_config, read_thresholds,
                                             resolve_model)

    if isinstance(model, Segmenter):
        return settings_fingerprint(model.settings, model.loaded.path)
    if isinstance(model, LoadedModel):
        return settings_fingerprint(settings, model.path)
    folder = resolve_model(model if model is not None else settings.model)
    read_config(folder)
    read_thresholds(folder)
    if not (folder / _WEIGHTS).is_file():
        raise ModelFolderError(f"{folder / _WEIGHTS}: missing")
    return settings_fingerprint(settings, folder)
