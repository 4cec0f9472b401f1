"""`cellvit train`: train a model folder on images and instance masks."""

from dataclasses import asdict, fields
from pathlib import Path

import click

from cellvit_cli.cli.options import build, setting_option
from cellvit_cli.registry import HEADS as HEAD_NAMES
from cellvit_cli.settings import (AUGMENTATIONS, PRECISION_CHOICES, AugmentConfig, TrainConfig,
                                  TrainRequest, default_of)


def _heads(ctx, param, value: str) -> tuple[str, ...]:
    """--heads star,flow -> ('star', 'flow'); TrainConfig checks the names."""
    return tuple(h.strip() for h in value.split(",") if h.strip())


def _check_variant(variant: str) -> None:
    """A usage error for an unknown --variant (after the light checks: this imports torch)."""
    from cellvit_cli.modeling import VARIANTS

    if variant not in VARIANTS:
        raise click.BadParameter(f"{variant!r}: choose from {', '.join(sorted(VARIANTS))}",
                                 param_hint="'--variant'")


def _inherit_from_init(init_model: str, options: dict) -> None:
    """Fill the options left at their defaults that fine-tuning must share with the
    `--init` model (its variant and its normalisation) from that model's config.json; a
    usage error when it is no model."""
    from cellvit_cli.modeling.folder import ModelFolderError, read_config, resolve_model

    try:
        config = read_config(resolve_model(init_model))
    except ModelFolderError as err:
        raise click.BadParameter(str(err), param_hint="'--init'") from err
    for name, value in (("variant", config.variant), ("norm_percentiles", config.percentiles)):
        if not _given(name):
            options[name] = value


def _given(name: str) -> bool:
    """Whether the command line (or the environment) set the parameter `name`; False for
    one left at its default, and for a name that is no parameter of the command."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT)


def _saved_train_config(out_dir: Path) -> dict:
    """The train config in OUT/checkpoint.pt ({} when there is none or it cannot be read:
    the resume itself then says why)."""
    from cellvit_cli.modeling.folder import ModelFolderError, read_state
    from cellvit_cli.training.loop import CHECKPOINT_FILE

    try:
        return read_state(out_dir / CHECKPOINT_FILE).get("train_config") or {}
    except ModelFolderError:
        return {}


def _inherit_from_checkpoint(out_dir: Path, options: dict, crop_size: int,
                             augmentation: str) -> dict:
    """With --resume: fill every TrainConfig option left at its default from the run's
    checkpoint, so `train --resume -o OUT` needs only the data options; returns the
    augmentation settings (a dict of AugmentConfig fields) the same way."""
    saved = _saved_train_config(out_dir)
    for f in fields(TrainConfig):
        if f.name in saved and f.name != "augment" and not _given(f.name):
            value = saved[f.name]
            options[f.name] = tuple(value) if isinstance(value, list) else value
    augment = (dict(saved["augment"]) if "augment" in saved and not _given("augmentation")
               else asdict(AUGMENTATIONS[augmentation]))
    if _given("crop_size") or "crop_size" not in augment:
        augment["crop_size"] = crop_size
    return augment


def _say(line: str) -> None:
    """A progress line of training, on stderr so that stdout keeps the summary."""
    click.echo(line, err=True)


existing_dir = click.Path(exists=True, file_okay=False, path_type=Path)
existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--images", required=True, type=existing_dir,
              help="Folder of training images (TIFF, PNG, JPEG).")
@click.option("--masks", required=True, type=existing_dir,
              help="Folder of instance label images named like their image, or with "
                   "_masks, _mask, _labels or _seg.npy (Cellpose); may be --images itself.")
@click.option("--mask-suffix", default=None,
              help="Mask names end with this before the extension ('' for the image's "
                   "name); default: found from the names.")
@click.option("--ids-file", type=existing_file, help="Train only on these stems (one per line).")
@click.option("--val-images", type=existing_dir, help="Validation images (default: --images).")
@click.option("--val-masks", type=existing_dir, help="Validation masks (default: --masks).")
@click.option("--val-ids-file", type=existing_file, help="Validation stems (one per line).")
@click.option("--val-fraction", type=float, default=None,
              help="Hold out this fraction (0 to 0.9) of the training pairs for validation "
                   "instead.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Model folder to write (config, weights, thresholds, model card, logs).")
@setting_option(TrainConfig, "--variant", show_default=True,
                help="vit_nano_p16 (tests), vit_tiny_p16_s2 (CPU: maps at stride 2, model "
                     "v2's), vit_tiny_p16 (model v1's), vit_tiny_p8, vit_small_p16 (GPU); all "
                     "in docs/training.md, Variants. With --init: that model's.")
@click.option("--heads", default=",".join(default_of(TrainConfig, "heads")), show_default=True,
              callback=_heads,
              help=f"Comma list of heads to train jointly: {', '.join(HEAD_NAMES)}.")
@setting_option(TrainConfig, "--in-channels", type=int, show_default=True,
                help="Channels the model takes: 1 averages multi-channel images to grey; N "
                     "uses the first N channels (a grey image is repeated).")
@setting_option(TrainConfig, "--epochs", type=int, show_default=True)
@setting_option(TrainConfig, "--steps-per-epoch", type=int,
                help="Default: one crop per training image per epoch.")
@setting_option(TrainConfig, "--batch-size", type=int, show_default=True)
@setting_option(AugmentConfig, "--crop-size", type=int, show_default=True,
                help="Side of the square training crops (px, >= 32).")
@click.option("--augment", "augmentation", type=click.Choice(list(AUGMENTATIONS)),
              default="standard", show_default=True,
              help="Augmentation recipe: standard (flips, rotations, zoom 0.7-1.4, gain, "
                   "offset, gamma, noise) or robust (also dim objects beside bright ones, "
                   "background ramps, blur, noise levels, crowded crops, zoom 0.6-1.6).")
@setting_option(TrainConfig, "--norm-percentiles", type=float, nargs=2, metavar="LOW HIGH",
                show_default=True,
                help="Intensity percentiles of each image mapped to 0 and 1 (kept in the "
                     "model's config.json; segment then normalises the same way). With "
                     "--init: that model's.")
@click.option("--init", "init_model", default=None, metavar="MODEL",
              help="Start from this model folder or shipped model's weights (fine-tuning "
                   "to your images). With another --variant: the weights it shares by name "
                   "and shape (a warm start). Ignored with --resume.")
@setting_option(TrainConfig, "--lr", type=float, show_default=True,
                help="Peak learning rate (AdamW; warm-up, then cosine decay).")
@setting_option(TrainConfig, "--time-budget", type=float,
                help="Minutes of training: the LR schedule follows time and training stops "
                     "there (or at --epochs, whichever comes first). Not bit-reproducible.")
@setting_option(TrainConfig, "--val-every", type=int, show_default=True,
                help="Epochs between validations.")
@setting_option(TrainConfig, "--device", show_default=True,
                help="auto, cpu, cuda, cuda:N or mps.")
@setting_option(TrainConfig, "--precision", type=click.Choice(PRECISION_CHOICES),
                show_default=True,
                help="Autocast of the training steps (weights and optimizer stay fp32); "
                     "auto: mixed precision on CUDA, bf16 on CPUs with AMX (1.4x faster, "
                     "same losses), fp32 elsewhere (AVX512-BF16 alone: no faster on 2 "
                     "cores; docs/benchmarks.md).")
@setting_option(TrainConfig, "--seed", type=int, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where flow targets are cached (default: OUT/.target_cache).")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/checkpoint.pt with the settings it was trained with "
                   "(options not given are taken from it; more --epochs, a longer "
                   "--time-budget, another --val-every, --device or --precision may "
                   "change; the data options are still needed).")
@click.option("--overwrite", is_flag=True,
              help="Replace the model already in OUT (its card, scores and logs go too).")
def train(resume, overwrite, crop_size, augmentation, **options):
    """Train a model on images and instance masks; write a model folder.

    Images pair with masks by name: img1.tif with masks/img1.tif, or img1_masks.tif (also
    in the images folder itself, as Cellpose keeps them) or img1_seg.npy. Crops are
    augmented (flips, rotations, scale, intensity); one line per validation (every
    --val-every epochs) gives AP@0.5 per mode and the best so far, and the best model is
    kept; thresholds are tuned on the validation set at the end, a model card (README.md)
    is written, and a closing summary says where the model is. Interrupted runs continue
    with --resume; an OUT that already holds a model is refused unless --overwrite.

    \b
    Example:
      cellvit train --images data/images --masks data/masks --val-fraction 0.1 \\
          --epochs 50 -o models/my_model
    """
    if resume and overwrite:
        raise click.UsageError("give --resume or --overwrite, not both")
    if options["init_model"] is not None and not resume:
        _inherit_from_init(options["init_model"], options)
    augment = ({**asdict(AUGMENTATIONS[augmentation]), "crop_size": crop_size} if not resume
               else _inherit_from_checkpoint(options["out_dir"], options, crop_size, augmentation))
    request = build(TrainRequest, **{f.name: options.pop(f.name) for f in fields(TrainRequest)})
    augment = build(AugmentConfig, **augment)
    cfg = build(TrainConfig, augment=augment, **options)
    _check_variant(cfg.variant)
    from cellvit_cli.training.finish import report_lines
    from cellvit_cli.training.run import run_training

    try:
        report = run_training(request, cfg, resume=resume, overwrite=overwrite, log=_say)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    except OSError as err:  # e.g. the disk filled up or a folder went read-only mid-run
        raise click.ClickException(f"{err.filename}: {err.strerror}") from err
    for line in report_lines(report):
        click.echo(line, err=line.startswith("warning:"))
