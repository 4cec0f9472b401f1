"""Self-describing model folders: config.json, thresholds.json, weights.pt, README.md."""

import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cellvit_cli import __version__
from cellvit_cli.io import atomic_path
from cellvit_cli.modeling.build import VARIANTS, build_model
from cellvit_cli.modeling.model import CellViT
from cellvit_cli.postprocess import MODES, mode_thresholds
from cellvit_cli.preprocess import PERCENTILES
from cellvit_cli.registry import HEADS
from cellvit_cli.settings import check_percentiles

FORMAT_VERSION = 1
DEFAULT_MODEL = "nuclei_fluo_v2"
CONFIG_FILE, THRESHOLDS_FILE, WEIGHTS_FILE, CARD_FILE = (
    "config.json", "thresholds.json", "weights.pt", "README.md")
SCORES_FILE = "scores.json"  # {data set: {mode: {"ap50": .., "ap75": .., "map": .., ...}}}
SUMMARY_FILE = "train_summary.json"  # how training went; `cellvit models` shows its warnings
RETIRED_KEYS = ("pixel_size",)  # written by earlier versions, never used: ignored on reading
# what torch.load raises on a damaged file: short reads, a broken zip, a bad pickle
_TORCH_LOAD_ERRORS = (OSError, EOFError, RuntimeError, KeyError, ValueError,
                      pickle.UnpicklingError)


@dataclass
class ModelConfig:
    """What a model folder says about its model and its training data."""

    variant: str
    heads: tuple[str, ...]
    in_channels: int = 1
    n_rays: int = 32
    # the intensity percentiles (low, high) mapped to 0 and 1 in training; segment uses them
    normalization: dict = field(default_factory=lambda: {"percentiles": list(PERCENTILES)})
    median_diameter: float = 17.0     # px, median object diameter of the training data
    format_version: int = FORMAT_VERSION
    code_version: str = __version__

    def build(self) -> CellViT:
        return build_model(self.variant, tuple(self.heads), self.in_channels, self.n_rays)

    @property
    def percentiles(self) -> tuple[float, float]:
        """(low, high) of `normalization`: how the model's input is normalised."""
        return tuple(self.normalization["percentiles"])


@dataclass
class LoadedModel:
    model: CellViT
    config: ModelConfig
    thresholds: dict
    path: Path


class ModelFolderError(ValueError):
    """A model folder is missing, damaged or from an incompatible version; the message is
    one line naming the file."""


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


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ModelFolderError naming it when missing, unreadable or not
    an object."""
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise ModelFolderError(f"{path}: unreadable JSON ({_reason(err)})") from err
    if not isinstance(raw, dict):
        raise ModelFolderError(f"{path}: holds a JSON {type(raw).__name__}, not an object")
    return raw


def read_state(path: Path) -> dict:
    """A dict saved with torch.save, read with weights_only; ModelFolderError naming `path`
    when it is missing, truncated, corrupt or not a dict."""
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _TORCH_LOAD_ERRORS as err:
        raise ModelFolderError(f"{path}: truncated or corrupt ({_reason(err)})") from err
    if not isinstance(state, dict):
        raise ModelFolderError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def read_config(folder: Path) -> ModelConfig:
    """Read and check config.json against this version of the code."""
    path = folder / CONFIG_FILE
    raw = read_json(path)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFolderError(f"{folder}: model format {version}, this cellvit-cli "
                               f"({__version__}) reads format {FORMAT_VERSION}")
    raw = {k: v for k, v in raw.items() if k not in RETIRED_KEYS}
    known = set(ModelConfig.__dataclass_fields__)
    if set(raw) - known:
        raise ModelFolderError(f"{path}: unknown keys {sorted(set(raw) - known)}")
    try:
        config = ModelConfig(**{**raw, "heads": tuple(raw["heads"])})
    except (KeyError, TypeError) as err:
        raise ModelFolderError(f"{path}: missing or malformed key ({err})") from err
    if config.variant not in VARIANTS or not set(config.heads) <= set(HEADS):
        raise ModelFolderError(f"{folder}: variant {config.variant!r} or heads {config.heads} "
                               f"unknown to this cellvit-cli ({__version__})")
    _check_numbers(path, config)
    _check_normalization(path, config)
    return config


def _check_numbers(path: Path, config: ModelConfig) -> None:
    """in_channels and n_rays: positive integers; median_diameter: a positive number."""
    for name, kinds in (("in_channels", int), ("n_rays", int), ("median_diameter", (int, float))):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
            kind = "integer" if kinds is int else "number"
            raise ModelFolderError(f"{path}: {name} must be a positive {kind}, got {value!r}")


def _check_normalization(path: Path, config: ModelConfig) -> None:
    """normalization: {"percentiles": [low, high]} with 0 <= low < high <= 100."""
    try:
        config.normalization["percentiles"] = list(check_percentiles(
            config.normalization["percentiles"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFolderError(f"{path}: normalization must be {{\"percentiles\": [LOW, HIGH]}}"
                               f" ({_reason(err)})") from err


def read_thresholds(folder: Path) -> dict:
    """thresholds.json ({} when absent), checked against the decoding modes."""
    path = folder / THRESHOLDS_FILE
    thresholds = read_json(path) if path.is_file() else {}
    for mode in set(MODES) & set(thresholds):
        try:
            mode_thresholds(mode, thresholds)
        except (TypeError, ValueError) as err:
            raise ModelFolderError(f"{path}: {mode!r}: {_reason(err)}") from err
    return thresholds


def load_model_folder(name_or_path=None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (or a shipped model by name) for inference, in eval mode.

    Every damage (missing, truncated or corrupt weights, unparsable config.json or
    thresholds.json, weights that do not fit the config) is a ModelFolderError naming the file.
    """
    folder = resolve_model(name_or_path)
    config = read_config(folder)
    thresholds = read_thresholds(folder)
    state = read_state(folder / WEIGHTS_FILE)
    model = config.build()
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, AttributeError) as err:
        raise ModelFolderError(f"{folder / WEIGHTS_FILE}: weights do not fit the config "
                               f"({_reason(err)})") from err
    return LoadedModel(model.to(device).eval(), config, thresholds, folder)


def _reason(err: Exception) -> str:
    """The first sentence of an error's message (its type when it has none)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]


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
