"""The network: ViT encoder, conv stem, decoder, heads; builder and model folders."""

from cellvit_cli.modeling.build import VARIANTS, build_model
from cellvit_cli.modeling.folder import (DEFAULT_MODEL, LoadedModel, ModelConfig, ModelFolderError,
                                         available_models, load_model_folder, resolve_model,
                                         save_model_folder, save_thresholds)
from cellvit_cli.modeling.heads import activate
from cellvit_cli.modeling.model import CellViT

__all__ = ["VARIANTS", "DEFAULT_MODEL", "CellViT", "LoadedModel", "ModelConfig", "ModelFolderError",
           "activate", "available_models", "build_model", "load_model_folder", "resolve_model",
           "save_model_folder", "save_thresholds"]
