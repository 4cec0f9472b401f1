"""The `cellvit` command group. Each subcommand lives in its own module and stays thin."""

import click

from cellvit_cli import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellvit")
def main() -> None:
    """Instance segmentation of cells and nuclei in microscopy TIFFs.

    \b
    Example:
      cellvit segment sample_data -o out
      cellvit evaluate --pred out --gt sample_data/masks -o report
    """


def _register() -> None:
    import importlib

    for name in ("segment", "train", "evaluate", "models"):
        try:
            module = importlib.import_module(f"cellvit_cli.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"cellvit_cli.cli.{name}":
                raise
            continue
        main.add_command(getattr(module, name.replace("-", "_")))


_register()
