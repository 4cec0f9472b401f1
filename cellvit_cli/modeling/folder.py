"""Self-describing model folders: config.json, thresholds.json, weights.pt, README.md."""

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cellvit_cli import __version__
from cellvit_cli.io import atomic_path
from cellvit_cli.modeling.build import VARIANTS, build_model
from cellvit_cli.modeling.model import CellViT
from cellvit_cli.targets import HEADS

FORMAT_VERSION = 1
DEFAULT_MODEL = "nuclei_fluo_tiny"
CONFIG_FILE, THRESHOLDS_FILE, WEIGHTS_FILE, CARD_FILE = (
    "config.json", "thresholds.json", "weights.pt", "README.md")
SCORES_FILE = "scores.json"  # {data set: {mode: {"ap50": .., "ap75": .., "map": .., ...}}}


@dataclass
class ModelConfig:
    """What a model folder says about its model and its training data."""

    variant: str
    heads: tuple[str, ...]
    in_channels: int = 1
    n_rays: int = 32
    normalization: dict = field(default_factory=lambda: {"percentiles": [1.0, 99.8]})
    pixel_size: float | None = None   # um per pixel of the training data, if known
    median_diameter: float = 17.0     # px, median object diameter of the training data
    format_version: int = FORMAT_VERSION
    code_version: str = __version__

    def build(self) -> CellViT:
        return build_model(self.variant, tuple(self.heads), self.in_channels, self.n_rays)


@dataclass
class LoadedModel:
    model: CellViT
    config: ModelConfig
    thresholds: dict
    path: Path


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete or from an incompatible version."""


def models_dir() -> Path:
    """Where shipped models live: inside the installed package, or `models/` of a checkout."""
    installed = Path(__file__).resolve().parents[1] / "_models"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "models"


def available_models() -> dict[str, Path]:
    """{name: folder} of the shipped models."""
    root = models_dir()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / CONFIG_FILE).is_file()}


def resolve_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """A model folder from a path or a shipped model's name (None: the default model)."""
    name = DEFAULT_MODEL if name_or_path is None else name_or_path
    path = Path(name)
    if (path / CONFIG_FILE).is_file():
        return path
    shipped = available_models()
    if str(name) in shipped:
        return shipped[str(name)]
    raise ModelFolderError(f"{name}: no model folder or shipped model of that name "
                           f"(shipped: {', '.join(shipped) or 'none'})")


def read_config(folder: Path) -> ModelConfig:
    """Read and check config.json against this version of the code."""
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{folder / CONFIG_FILE}: unreadable ({err})") from err
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(f"{folder}: model format {version}, this cellvit-cli "
                               f"({__version__}) reads format {FORMAT_VERSION}")
    known = set(ModelConfig.__dataclass_fields__)
    if set(raw) - known:
        raise ModelFolderError(f"{folder / CONFIG_FILE}: unknown keys {sorted(set(raw) - known)}")
    config = ModelConfig(**{**raw, "heads": tuple(raw["heads"])})
    if config.variant not in VARIANTS or not set(config.heads) <= set(HEADS):
        raise ModelFolderError(f"{folder}: variant {config.variant!r} or heads {config.heads} "
                               f"unknown to this cellvit-cli ({__version__})")
    return config


def load_model_folder(name_or_path=None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (or a shipped model by name) for inference, in eval mode."""
    folder = resolve_model(name_or_path)
    config = read_config(folder)
    model = config.build()
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        raise ModelFolderError(f"{folder / WEIGHTS_FILE}: weights do not fit the config "
                               f"({str(err).splitlines()[0]})") from err
    thresholds_path = folder / THRESHOLDS_FILE
    thresholds = json.loads(thresholds_path.read_text()) if thresholds_path.is_file() else {}
    return LoadedModel(model.to(device).eval(), config, thresholds, folder)


def save_model_folder(folder: str | os.PathLike, model: CellViT, config: ModelConfig,
                      thresholds: dict | None = None, half: bool = False) -> Path:
    """Write config.json, weights.pt (fp16 if `half`) and thresholds.json into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             for k, v in model.state_dict().items()}
    _atomic_write(folder / WEIGHTS_FILE, lambda p: torch.save(state, p))
    _atomic_write(folder / CONFIG_FILE,
                  lambda p: Path(p).write_text(json.dumps(asdict(config), indent=2) + "\n"))
    if thresholds is not None:
        save_thresholds(folder, thresholds)
    return folder


def save_thresholds(folder: Path, thresholds: dict) -> None:
    _atomic_write(Path(folder) / THRESHOLDS_FILE,
                  lambda p: Path(p).write_text(json.dumps(thresholds, indent=2) + "\n"))


def _atomic_write(path: Path, write) -> None:
    """`write(tmp)` then rename onto `path` (see io.atomic_path)."""
    with atomic_path(path) as tmp:
        write(tmp)
