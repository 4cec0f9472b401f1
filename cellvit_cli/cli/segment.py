"""`cellvit segment`: label the cells of TIFF images (files, folders or globs)."""

import glob
import logging
import os
import sys
from pathlib import Path

import click

from cellvit_cli.cli.options import build, setting_option
from cellvit_cli.registry import MODES
from cellvit_cli.settings import BLOCK_MODES, PRECISION_CHOICES, SegmentSettings

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


_KNOBS = [  # (flag, click options) of the decoding and clean-up knobs
    ("--prob-thresh", dict(type=float, help="Object probability threshold, 0 to 1 (star, flow, "
                                            "fused).")),
    ("--nms-thresh", dict(type=float, help="Overlap (0 to 1) above which star polygons are "
                                           "suppressed (star, fused).")),
    ("--flow-thresh", dict(type=float, help="Largest flow error of a kept mask, >= 0 (flow; as "
                                            "Cellpose's).")),
    ("--fg-thresh", dict(type=float, help="Foreground threshold, 0 to 1 (boundary, fused).")),
    ("--boundary-thresh", dict(type=float, help="Boundary threshold, 0 to 1 (boundary, "
                                                "fused).")),
    ("--min-size", dict(type=int, show_default=True, metavar="PX",
                        help="Drop objects smaller than PX pixels (at the input's size).")),
    ("--exclude-edges", dict(is_flag=True, help="Drop objects touching the image border.")),
    ("--norm-percentiles", dict(type=float, nargs=2, metavar="LOW HIGH",
                                help="Intensity percentiles mapped to 0 and 1 per channel. "
                                     "[default: the model's config.json normalization; "
                                     "1 99.8 for the shipped model]")),
    ("--invert", dict(is_flag=True, help="Invert intensities after normalisation (dark "
                                         "nuclei on a bright background).")),
    ("--measure-channels", dict(metavar="all|N,M",
                                help="Channels --measure reports, columns named c<N>. "
                                     "[default: --channel if given, else all]")),
]
_THRESHOLD_HELP = " [default: the model's thresholds.json]"


def _knob_options(command):
    """The decoding and clean-up options of `segment` (fields of SegmentSettings)."""
    for flag, options in reversed(_KNOBS):
        if flag.endswith("-thresh"):
            options = {**options, "help": options["help"] + _THRESHOLD_HELP}
        command = setting_option(SegmentSettings, flag, **options)(command)
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
@setting_option(SegmentSettings, "--model",
                help="Model folder or shipped model name. [default: the shipped default model]")
@setting_option(SegmentSettings, "--mode", type=click.Choice(MODE_CHOICES), show_default=True,
                help="Which head(s) to decode; auto: the model's tuned default.")
@setting_option(SegmentSettings, "--recursive", is_flag=True,
                help="Also take images from sub-folders of INPUT folders (a glob's ** always "
                     "does); sub-folders are mirrored in OUT.")
@setting_option(SegmentSettings, "--pattern",
                help="Only files of input folders whose name matches this glob, e.g. "
                     "'*_dapi.tif'. [default: *.tif, *.tiff]")
@setting_option(SegmentSettings, "--channel", type=int,
                help="Segment this channel (0-based). [default: the mean of all channels]")
@setting_option(SegmentSettings, "--diameter", metavar="auto|PX", show_default=True,
                help="Typical cell diameter in the images (px); images are zoomed so cells "
                     "match the model's training size. auto (or 0): estimated per image, "
                     "shown in the log and OUT/summary.csv.")
@setting_option(SegmentSettings, "--scale", type=float,
                help="Zoom images by this factor (> 0) before the network (instead of "
                     "--diameter; no estimate).")
@setting_option(SegmentSettings, "--batch-size", type=int,
                help="Tiles per network batch (tiles of several images share a batch). "
                     "[default: 8 on a GPU, 1 on the CPU]")
@setting_option(SegmentSettings, "--device", show_default=True,
                help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
@setting_option(SegmentSettings, "--precision", type=click.Choice(PRECISION_CHOICES),
                show_default=True,
                help="Network precision; auto: bf16 on CUDA and on CPUs with AVX512-BF16 or "
                     "AMX, else fp32.")
@setting_option(SegmentSettings, "--tta", is_flag=True,
                help="Test-time augmentation: average the maps of the 8 flips and rotations "
                     "(8x the network time).")
@setting_option(SegmentSettings, "--tile-size", type=int, show_default=True,
                help="Network tile size (px, >= 16), rounded down to the model's patch "
                     "multiple.")
@setting_option(SegmentSettings, "--overlap", type=int, show_default=True,
                help="Overlap of neighbouring tiles (px); keep it above the largest cell.")
@setting_option(SegmentSettings, "--block-mode", type=click.Choice(BLOCK_MODES),
                show_default=True,
                help="Segment big images block by block into a tiled BigTIFF (auto: images "
                     "above 3072 x 3072 px).")
@setting_option(SegmentSettings, "--block-size", type=int, show_default=True,
                help="Block mode's block size (px, >= 256); with --cluster, the unit of work "
                     "of a huge image's tasks.")
@setting_option(SegmentSettings, "--overwrite", is_flag=True,
                help="Redo images whose outputs exist (default: skip).")
@setting_option(SegmentSettings, "--roi", is_flag=True,
                help="Also write <stem>_rois.zip (ImageJ/Fiji ROIs).")
@setting_option(SegmentSettings, "--geojson", is_flag=True,
                help="Also write <stem>.geojson (QuPath).")
@setting_option(SegmentSettings, "--overlay", is_flag=True,
                help="Also write <stem>_overlay.png (outlines).")
@setting_option(SegmentSettings, "--measure", is_flag=True,
                help="Also write <stem>_cells.csv (per-cell measures).")
@setting_option(SegmentSettings, "--save-maps", is_flag=True,
                help="Also write the dense maps, one TIFF per head.")
@setting_option(SegmentSettings, "--zarr", is_flag=True,
                help="Also write the labels as OME-Zarr, <stem>_labels.ome.zarr (chunked; "
                     "napari opens it).")
@click.option("--cluster", default=None, metavar="local:N|ADDRESS|FILE", callback=_check_cluster,
              help="Segment on a dask cluster, one task per image: local:N (N worker processes "
                   "here), a scheduler address (tcp://HOST:PORT) or a scheduler file (*.json). "
                   "See docs/distributed.md.")
@_knob_options
def segment(inputs, out_dir, cluster, **options):
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
    settings = build(SegmentSettings, **options)  # every option is a SegmentSettings field
    _check_inputs(inputs)  # before the heavy imports below
    _check_model_and_device(settings, cluster)
    from cellvit_cli.io import InputError
    from cellvit_cli.modeling import ModelFolderError

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


def _check_model_and_device(settings: SegmentSettings, cluster: str | None) -> None:
    """Usage errors for a --model that is no model folder or shipped name, and a --device
    this machine lacks (remote workers of a --cluster address check their own)."""
    from cellvit_cli.device import resolve_device
    from cellvit_cli.modeling import ModelFolderError, resolve_model

    try:
        resolve_model(settings.model)
    except ModelFolderError as err:
        raise click.BadParameter(str(err), param_hint="'--model'")
    try:
        if cluster is None or cluster.startswith("local:"):
            resolve_device(settings.device)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--device'")
