"""`cellvit models`: the shipped models and their measured scores."""

import json
from pathlib import Path

import click


TUNED_SCORES = "validation (tuned)"  # how scores from thresholds.json are named


def model_summary(folder: Path) -> dict:
    """Name, variant, heads, default mode, scores and training warnings of a model folder
    (no weights loaded); ModelFolderError naming a file that is missing or not JSON.

    Scores come from scores.json ({data set: {mode: {...}}}) or, without it, from the
    validation scores that `cellvit train` keeps in thresholds.json."""
    from cellvit_cli.modeling.folder import (CONFIG_FILE, SCORES_FILE, SUMMARY_FILE,
                                             THRESHOLDS_FILE, read_json)

    config = read_json(folder / CONFIG_FILE)
    thresholds, scores, summary = (read_json(path) if path.is_file() else {} for path in (
        folder / THRESHOLDS_FILE, folder / SCORES_FILE, folder / SUMMARY_FILE))
    if not scores and isinstance(thresholds.get("scores"), dict):
        scores = {TUNED_SCORES: thresholds["scores"]}
    return {"name": folder.name, "path": str(folder), "variant": config.get("variant"),
            "heads": config.get("heads"), "default_mode": thresholds.get("default_mode"),
            "median_diameter": config.get("median_diameter"), "scores": scores,
            "warnings": summary.get("warnings", [])}


def _score_line(scores: dict, mode: str | None) -> str:
    parts = []
    for data, by_mode in scores.items():
        s = by_mode.get(mode) if mode and isinstance(by_mode, dict) else None
        if s and "ap50" in s:
            ap75 = f", AP@0.75 {s['ap75']:.3f}" if "ap75" in s else ""
            parts.append(f"{data}: AP@0.5 {s['ap50']:.3f}{ap75}")
    return "; ".join(parts) or "no recorded scores"


def _folders(names) -> list[Path]:
    """Model folders of the arguments (folder paths or shipped model names), or of every
    shipped model when none is given; ModelFolderError naming one that is neither."""
    from cellvit_cli.modeling.folder import available_models, resolve_model

    if not names:
        return list(available_models().values())
    return [Path(name) if Path(name).is_dir() else resolve_model(name) for name in names]


@click.command()
@click.argument("models_", metavar="[NAME|FOLDER]...", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
def models(models_, as_json):
    """List the shipped models (or the given models: names or folders) with their scores.

    The default model is used by `cellvit segment` when --model is not given; any listed
    name or a model folder path can be passed to --model. Scores are those measured on
    test data (scores.json), else the validation scores of training (thresholds.json).

    \b
    Example:
      cellvit models
      cellvit models runs/my_model --json
    """
    from cellvit_cli.modeling.folder import DEFAULT_MODEL, ModelFolderError

    try:
        summaries = [model_summary(p) for p in _folders(models_)]
    except ModelFolderError as err:
        raise click.ClickException(str(err))
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    if not summaries:
        click.echo("no shipped models found")
    for s in summaries:
        star = " (default)" if s["name"] == DEFAULT_MODEL and not models_ else ""
        click.echo(f"{s['name']}{star}: {s['variant']}, heads {','.join(s['heads'])}, "
                   f"mode {s['default_mode'] or 'auto'}, median diameter {s['median_diameter']} px")
        click.echo(f"    {_score_line(s['scores'], s['default_mode'])}")
        for warning in s["warnings"]:
            click.echo(f"    warning: {warning}")
