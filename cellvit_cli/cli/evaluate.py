"""`cellvit evaluate`: score predicted label images against ground truth."""

from pathlib import Path

import click

from cellvit_cli import evaluation
from cellvit_cli.io import BinaryMaskError, InputError
from cellvit_cli.metrics import DEFAULT_IOU_THRESHS
from cellvit_cli.pairing import PairingError, shown

_FOLDER = click.Path(exists=True, file_okay=False, dir_okay=True, path_type=Path)


def _as_range(threshs) -> str:
    """Evenly spaced IoU thresholds as start:step:stop, e.g. '0.5:0.05:0.95'."""
    step = round(threshs[1] - threshs[0], 6)
    return f"{threshs[0]:g}:{step:g}:{threshs[-1]:g}"


def _thresholds(ctx, param, value: str) -> tuple[float, ...]:
    try:
        return evaluation.parse_thresholds(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param)


def _unmatched_message(pairing: evaluation.Pairing, limit: int = 10) -> str:
    parts = []
    for what, files in (("predictions without ground truth", pairing.unpaired),
                        ("ground truth without prediction", pairing.unpaired_partners)):
        if files:
            names = ", ".join(p.name for p in files[:limit])
            more = f" (+{len(files) - limit} more)" if len(files) > limit else ""
            parts.append(f"{len(files)} {what}: {names}{more}")
    pred_suffix, gt_suffix = (shown(s) for s in pairing.suffixes)
    return "; ".join(parts) + (f" (pairing <name>{pred_suffix} with <name>{gt_suffix}: "
                               "--pred-suffix and --gt-suffix choose others)")


def _pair_or_fail(pred_dir, gt_dir, pred_suffix, gt_suffix, skip_unmatched):
    """Pair the folders' files; a usage error on ambiguous names, no pairs, or unpaired
    files unless skipped."""
    try:
        pairing = evaluation.pair_files(pred_dir, gt_dir, pred_suffix, gt_suffix)
    except PairingError as err:
        raise click.UsageError(str(err))
    if not pairing.pairs:
        raise click.UsageError(evaluation.no_pairs_message(pred_dir, gt_dir, pred_suffix,
                                                           gt_suffix))
    if pairing.unpaired or pairing.unpaired_partners:
        if not skip_unmatched:
            raise click.UsageError(_unmatched_message(pairing) + "; use --skip-unmatched "
                                   "to evaluate the pairs found")
        click.echo(f"skipping {_unmatched_message(pairing)}", err=True)
    return pairing


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--pred", "pred_dir", type=_FOLDER, required=True,
              help="Folder of predicted label images (TIFF, PNG or Cellpose _seg.npy; e.g. "
                   "the output of `cellvit segment`).")
@click.option("--gt", "gt_dir", type=_FOLDER, required=True,
              help="Folder of ground-truth label images (TIFF, PNG or _seg.npy).")
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Write summary.json, per_image.csv and scores.png here.")
@click.option("--pred-suffix", default=None,
              help="Prediction names end with this before the extension ('' for none); "
                   "default: found from the names among _labels, _cp_masks, _masks, "
                   "_seg.npy and none.")
@click.option("--gt-suffix", default=None,
              help="Ground-truth names end with this ('' for none); default: found among "
                   "_masks, _mask, _labels, _seg.npy and none.")
@click.option("--iou-thresholds", "iou_threshs", default=_as_range(DEFAULT_IOU_THRESHS),
              show_default=True,
              callback=_thresholds, help="start:step:stop or a comma list, e.g. 0.5,0.75.")
@click.option("--skip-unmatched", is_flag=True,
              help="Evaluate the pairs found instead of failing on unpaired files.")
@click.option("--binary-gt", is_flag=True,
              help="Ground truth is binary masks (0/1): label their 8-connected objects.")
def evaluate(pred_dir, gt_dir, out_dir, pred_suffix, gt_suffix, iou_threshs, skip_unmatched,
             binary_gt):
    """Score predicted label images against ground truth.

    Files pair by name once a suffix is removed: pred img1_labels.tif (or img1.tif,
    img1_cp_masks.png, img1_seg.npy) goes with gt img1.tif or img1_masks.tif; the
    suffixes are found from the names, and ambiguous names are an error listing them.
    Prints AP (TP/(TP+FP+FN)), F1, PQ per IoU threshold, pooled over all objects, and AJI;
    with -o also writes summary.json, per_image.csv and scores.png. A binary mask (0/1 with
    several objects) is refused: it would score as one object.

    \b
    Example:
      cellvit evaluate --pred out --gt data/masks -o report
    """
    pairing = _pair_or_fail(pred_dir, gt_dir, pred_suffix, gt_suffix, skip_unmatched)
    settings = {"pred_dir": str(pred_dir), "gt_dir": str(gt_dir), "pred_suffix": pred_suffix,
                "gt_suffix": gt_suffix, "iou_thresholds": list(iou_threshs),
                "skip_unmatched": skip_unmatched, "binary_gt": binary_gt}
    try:
        if out_dir is not None:
            evaluation.check_output_dir(out_dir)
        result = evaluation.evaluate(pairing, iou_threshs, binary_gt)
        if out_dir is None:
            report = evaluation.summary(result, settings)
        else:
            report = evaluation.write_report(result, settings, out_dir)
    except BinaryMaskError as err:
        is_gt = any(str(gt) == err.path for _, _, gt in pairing.pairs)
        raise click.ClickException(str(err) + (" or pass --binary-gt" if is_gt else ""))
    except InputError as err:
        raise click.ClickException(str(err))
    click.echo(evaluation.format_table(report))
    if out_dir is not None:
        click.echo(f"report written to {out_dir}")
