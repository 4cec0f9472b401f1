"""`cellvit models`: the shipped models and their measured scores."""

import json
from pathlib import Path

import click


def model_summary(folder: Path) -> dict:
    """Name, variant, heads, default mode and scores of a model folder (no weights loaded);
    ModelFolderError naming a file that is missing or not JSON."""
    from cellvit_cli.modeling.folder import CONFIG_FILE, SCORES_FILE, THRESHOLDS_FILE, read_json

    config = read_json(folder / CONFIG_FILE)
    thresholds_path, scores_path = folder / THRESHOLDS_FILE, folder / SCORES_FILE
    thresholds = read_json(thresholds_path) if thresholds_path.is_file() else {}
    scores = read_json(scores_path) if scores_path.is_file() else {}
    return {"name": folder.name, "path": str(folder), "variant": config.get("variant"),
            "heads": config.get("heads"), "default_mode": thresholds.get("default_mode"),
            "median_diameter": config.get("median_diameter"), "scores": scores}


def _score_line(scores: dict, mode: str | None) -> str:
    parts = []
    for data, by_mode in scores.items():
        s = by_mode.get(mode) if mode else None
        if s:
            parts.append(f"{data}: AP@0.5 {s['ap50']:.3f}, AP@0.75 {s['ap75']:.3f}")
    return "; ".join(parts) or "no recorded scores"


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
def models(folders, as_json):
    """List the shipped models (or the given model folders) with their scores.

    The default model is used by `cellvit segment` when --model is not given; any listed
    name or a model folder path can be passed to --model.

    \b
    Example:
      cellvit models
      cellvit models runs/my_model --json
    """
    from cellvit_cli.modeling.folder import DEFAULT_MODEL, ModelFolderError, available_models

    paths = list(folders) or list(available_models().values())
    try:
        summaries = [model_summary(p) for p in paths]
    except ModelFolderError as err:
        raise click.ClickException(str(err))
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    if not summaries:
        click.echo("no shipped models found")
    for s in summaries:
        star = " (default)" if s["name"] == DEFAULT_MODEL and not folders else ""
        click.echo(f"{s['name']}{star}: {s['variant']}, heads {','.join(s['heads'])}, "
                   f"mode {s['default_mode'] or 'auto'}, median diameter {s['median_diameter']} px")
        click.echo(f"    {_score_line(s['scores'], s['default_mode'])}")
