"""`cellvit train`: train a model folder on images and instance masks."""

from pathlib import Path

import click

from cellvit_cli.registry import HEADS as HEAD_NAMES


def _heads(ctx, param, value: str) -> tuple[str, ...]:
    heads = tuple(h.strip() for h in value.split(",") if h.strip())
    if not heads or set(heads) - set(HEAD_NAMES):
        raise click.BadParameter(f"{value!r}: give a comma list of {', '.join(HEAD_NAMES)}")
    return heads


def _variant(ctx, param, value: str) -> str:
    from cellvit_cli.modeling import VARIANTS  # imports torch: only when the command runs

    if value not in VARIANTS:
        raise click.BadParameter(f"{value!r}: choose from {', '.join(sorted(VARIANTS))}")
    return value


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
@click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=None,
              help="Hold out this fraction of the training pairs for validation instead.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Model folder to write (config, weights, thresholds, logs).")
@click.option("--variant", default="vit_tiny_p16", show_default=True, callback=_variant,
              help="vit_nano_p16 (tests), vit_tiny_p16 (CPU), vit_tiny_p8, vit_small_p16 (GPU).")
@click.option("--heads", default=",".join(HEAD_NAMES), show_default=True, callback=_heads,
              help="Comma list of heads to train jointly.")
@click.option("--in-channels", type=click.IntRange(1), default=1, show_default=True,
              help="Channels the model takes: 1 averages multi-channel images to grey; N "
                   "uses the first N channels (a grey image is repeated).")
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None,
              help="Default: one crop per training image per epoch.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--crop-size", type=click.IntRange(32), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=5e-4, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Minutes of training: the LR schedule follows time and training stops "
                   "there (or at --epochs, whichever comes first). Not bit-reproducible.")
@click.option("--val-every", type=click.IntRange(1), default=1, show_default=True,
              help="Epochs between validations.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where flow targets are cached (default: OUT/.target_cache).")
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--overwrite", is_flag=True,
              help="Replace the model already in OUT (its card, scores and logs go too).")
def train(images, masks, mask_suffix, ids_file, val_images, val_masks, val_ids_file,
          val_fraction, out_dir, variant, heads, in_channels, epochs, steps_per_epoch,
          batch_size, crop_size, lr, time_budget, val_every, device, seed, cache_dir, resume,
          overwrite):
    """Train a model on images and instance masks; write a model folder.

    Images pair with masks by name: img1.tif with masks/img1.tif, or img1_masks.tif (also
    in the images folder itself, as Cellpose keeps them) or img1_seg.npy. Crops are
    augmented (flips, rotations, scale, intensity); one line per validation (every
    --val-every epochs) gives AP@0.5 per mode and the best so far, and the best model is
    kept; thresholds are tuned on the validation set at the end, and a closing summary
    says where the model is. Interrupted runs continue with --resume; an OUT that already
    holds a model is refused unless --overwrite.

    \b
    Example:
      cellvit train --images data/images --masks data/masks --val-fraction 0.1 \\
          --epochs 50 -o models/my_model
    """
    from cellvit_cli.training.finish import report_lines
    from cellvit_cli.training.run import TrainRequest, run_training

    if resume and overwrite:
        raise click.UsageError("give --resume or --overwrite, not both")
    request = TrainRequest(images, masks, ids_file, val_images, val_masks, val_ids_file,
                           val_fraction, out_dir, cache_dir, mask_suffix)
    try:
        report = run_training(
            request, resume=resume, overwrite=overwrite, log=_say, variant=variant,
            heads=heads, in_channels=in_channels, epochs=epochs, steps_per_epoch=steps_per_epoch,
            batch_size=batch_size, crop_size=crop_size, lr=lr, time_budget=time_budget,
            val_every=val_every, device=device, seed=seed)
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    except OSError as err:  # e.g. the disk filled up or a folder went read-only mid-run
        raise click.ClickException(f"{err.filename}: {err.strerror}") from err
    for line in report_lines(report):
        click.echo(line, err=line.startswith("warning:"))
