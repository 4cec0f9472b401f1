"""`cellvit segment`: label the cells of TIFF images (files, folders or globs)."""

import glob
import logging
import os
import sys
from pathlib import Path

import click

from cellvit_cli.registry import MODES

MODE_CHOICES = ("auto", *MODES)


class _TqdmHandler(logging.Handler):
    """Log lines on stderr without breaking the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _setup_logging() -> logging.Handler:
    handler = _TqdmHandler(logging.INFO)
    logger = logging.getLogger("cellvit_cli")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.getLogger("tifffile").setLevel(logging.ERROR)  # our own line names a bad file
    return handler


def _check_inputs(inputs) -> None:
    """A usage error for a missing path or a glob that matches nothing, found without the
    heavy imports (`inputs.find_inputs` checks the rest)."""
    for item in map(str, inputs):
        if os.path.exists(item):
            continue
        if not glob.has_magic(item):
            raise click.UsageError(f"{item}: no such file or folder")
        if not glob.glob(item, recursive="**" in item):
            raise click.UsageError(f"{item}: no files match")


class _Diameter(click.ParamType):
    """'auto', 0 (auto, as in Cellpose) or a positive number of pixels."""

    name = "auto|PX"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) or str(value).strip().lower() != "auto":
            try:
                number = float(value)
            except ValueError:
                self.fail(f"{value!r} is not 'auto' or a number of pixels", param, ctx)
            if not number >= 0 or number == float("inf"):
                self.fail(f"{value!r}: give a diameter > 0 px, or 0 / auto to estimate it",
                          param, ctx)
            return "auto" if number == 0 else number
        return "auto"


def _check_percentiles(ctx, param, value):
    """--norm-percentiles LOW HIGH, checked before the heavy imports."""
    low, high = value
    if not 0 <= low < high <= 100:
        raise click.BadParameter(f"{low:g} {high:g}: give 0 <= LOW < HIGH <= 100", ctx, param)
    return value


_PROB = click.FloatRange(0, 1)
_KNOBS = [  # (flags, click options); each name is a field of SegmentSettings
    ("--prob-thresh", dict(type=_PROB, help="Object probability threshold (star, flow, fused).")),
    ("--nms-thresh", dict(type=_PROB, help="Overlap above which star polygons are suppressed "
                                          "(star, fused).")),
    ("--flow-thresh", dict(type=click.FloatRange(min=0),
                           help="Largest flow error of a kept mask (flow; as Cellpose's).")),
    ("--fg-thresh", dict(type=_PROB, help="Foreground threshold (boundary, fused).")),
    ("--boundary-thresh", dict(type=_PROB, help="Boundary threshold (boundary, fused).")),
    ("--min-size", dict(type=click.IntRange(min=0), default=0, show_default=True, metavar="PX",
                        help="Drop objects smaller than PX pixels (at the input's size).")),
    ("--exclude-edges", dict(is_flag=True, help="Drop objects touching the image border.")),
    ("--norm-percentiles", dict(type=float, nargs=2, default=(1.0, 99.8), show_default=True,
                                metavar="LOW HIGH", callback=_check_percentiles,
                                help="Intensity percentiles mapped to 0 and 1 per channel.")),
    ("--invert", dict(is_flag=True, help="Invert intensities after normalisation (dark "
                                         "nuclei on a bright background).")),
    ("--measure-channels", dict(default=None, metavar="all|N,M",
                                help="Channels --measure reports, columns named c<N>. "
                                     "[default: --channel if given, else all]")),
]
_THRESHOLD_HELP = " [default: the model's thresholds.json]"


def _knob_options(command):
    """The decoding and clean-up options of `segment` (given to SegmentSettings as is)."""
    for flag, options in reversed(_KNOBS):
        if flag.endswith("-thresh"):
            options = {**options, "help": options["help"] + _THRESHOLD_HELP}
        command = click.option(flag, **options)(command)
    return command


def _check_cluster(ctx, param, value):
    """--cluster: its form (and that dask.distributed is installed), checked before the run."""
    if value is None:
        return None
    from cellvit_cli.cluster import parse_cluster  # light: no torch, no dask

    try:
        parse_cluster(value)
    except ValueError as err:
        raise click.BadParameter(str(err), ctx, param)
    return value


def _segment(inputs, out_dir, settings, cluster):
    """`segment_paths`, or on the dask cluster that `cluster` names."""
    if cluster is None:
        from cellvit_cli.inference.pipeline import segment_paths

        return segment_paths(inputs, out_dir, settings)
    from cellvit_cli.cluster import open_client
    from cellvit_cli.inference.distributed import segment_paths_distributed

    with open_client(cluster) as client:
        return segment_paths_distributed(inputs, out_dir, settings, client)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <stem>_labels.tif and the exports (created if needed).")
@click.option("--model", default=None,
              help="Model folder or shipped model name. [default: the shipped default model]")
@click.option("--mode", type=click.Choice(MODE_CHOICES), default="auto", show_default=True,
              help="Which head(s) to decode; auto: the model's tuned default.")
@click.option("--recursive", is_flag=True,
              help="Also take images from sub-folders of INPUT folders (a glob's ** always "
                   "does); sub-folders are mirrored in OUT.")
@click.option("--pattern", default=None,
              help="Only files of input folders whose name matches this glob, e.g. "
                   "'*_dapi.tif'. [default: *.tif, *.tiff]")
@click.option("--channel", type=click.IntRange(min=0), default=None,
              help="Segment this channel (0-based). [default: the mean of all channels]")
@click.option("--diameter", type=_Diameter(), default="auto", show_default=True,
              help="Typical cell diameter in the images (px); images are zoomed so cells match "
                   "the model's training size. auto (or 0): estimated per image, shown in the "
                   "log and OUT/summary.csv.")
@click.option("--scale", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Zoom images by this factor before the network (instead of --diameter; "
                   "no estimate).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Tiles per network batch (tiles of several images share a batch). "
                   "[default: 8 on a GPU, 1 on the CPU]")
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(("auto", "fp32", "bf16")), default="auto",
              show_default=True,
              help="Network precision; auto: bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, "
                   "else fp32.")
@click.option("--tile-size", type=click.IntRange(min=16), default=512, show_default=True,
              help="Network tile size (px), rounded down to the model's patch multiple.")
@click.option("--overlap", type=click.IntRange(min=0), default=64, show_default=True,
              help="Overlap of neighbouring tiles (px); keep it above the largest cell.")
@click.option("--block-mode", type=click.Choice(("auto", "on", "off")), default="auto",
              show_default=True,
              help="Segment big images block by block into a tiled BigTIFF (auto: images above "
                   "3072 x 3072 px).")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs exist (default: skip).")
@click.option("--roi", is_flag=True, help="Also write <stem>_rois.zip (ImageJ/Fiji ROIs).")
@click.option("--geojson", is_flag=True, help="Also write <stem>.geojson (QuPath).")
@click.option("--overlay", is_flag=True, help="Also write <stem>_overlay.png (outlines).")
@click.option("--measure", is_flag=True, help="Also write <stem>_cells.csv (per-cell measures).")
@click.option("--save-maps", is_flag=True, help="Also write the dense maps, one TIFF per head.")
@click.option("--cluster", default=None, metavar="local:N|ADDRESS|FILE", callback=_check_cluster,
              help="Segment on a dask cluster, one task per image: local:N (N worker processes "
                   "here), a scheduler address (tcp://HOST:PORT) or a scheduler file (*.json). "
                   "See docs/distributed.md.")
@_knob_options
def segment(inputs, out_dir, model, mode, recursive, pattern, channel, diameter, scale,
            batch_size, device, precision, tile_size, overlap, block_mode, overwrite, roi,
            geojson, overlay, measure, save_maps, cluster, **knobs):
    """Segment the cells of INPUT images (TIFF files, folders, globs) into OUT labels.

    Writes OUT/<stem>_labels.tif per image (uint16, uint32 above 65,535 cells, with the
    image's pixel size, zoom and object diameter), the exports asked for, and
    OUT/summary.csv (per image: diameter, zoom, cells, seconds). By default each image's
    object size is estimated and the image zoomed to the model's size; --diameter or
    --scale fix it. Finished images are skipped unless --overwrite, so an interrupted
    run resumes. Images that cannot be read or segmented are reported as failed (one line
    each) and the others are still done; the exit code is 1 if any image failed.

    \b
    Examples:
      cellvit segment sample_data -o out
      cellvit segment 'plates/**/*.tif' -o out --diameter 25 --roi --measure
      cellvit segment big_nuclei/ -o out             # object size estimated per image
    """
    if diameter != "auto" and scale is not None:
        raise click.UsageError("give --diameter or --scale, not both")
    _check_inputs(inputs)  # before the heavy imports below
    from cellvit_cli.device import resolve_device
    from cellvit_cli.inference.pipeline import SegmentSettings
    from cellvit_cli.io import InputError
    from cellvit_cli.modeling import ModelFolderError, resolve_model

    try:
        resolve_model(model)
    except ModelFolderError as err:
        raise click.BadParameter(str(err), param_hint="--model")
    try:
        if cluster is None or cluster.startswith("local:"):  # remote workers check their own
            resolve_device(device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--device")
    try:
        settings = SegmentSettings(
            model=model, mode=mode, channel=channel, diameter=diameter, scale=scale,
            batch_size=batch_size, device=device, precision=precision, tile_size=tile_size,
            overlap=overlap, block_mode=block_mode, overwrite=overwrite, roi=roi, geojson=geojson,
            overlay=overlay, measure=measure, save_maps=save_maps, recursive=recursive,
            pattern=pattern, **knobs)
    except ValueError as err:
        raise click.UsageError(str(err))
    handler = _setup_logging()
    try:
        report = _segment(inputs, out_dir, settings, cluster)
    except (ModelFolderError, InputError) as err:  # a damaged model, an unusable -o folder
        raise click.ClickException(str(err))
    except ValueError as err:  # no inputs, clashing outputs, a mode the model cannot decode
        raise click.UsageError(str(err))
    finally:
        logging.getLogger("cellvit_cli").removeHandler(handler)
    click.echo(f"segment: {report.summary()}")
    if report.failed:
        raise SystemExit(1)
