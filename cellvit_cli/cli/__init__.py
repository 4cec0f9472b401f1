"""The `cellvit` command group. Each subcommand lives in its own module and stays thin;
a module is imported only when its command runs (or for the group's --help), so a usage
error comes before the heavy imports of the other commands."""

import importlib

import click

from cellvit_cli import __version__

COMMANDS = ("segment", "train", "evaluate", "models")


class _LazyGroup(click.Group):
    """A group that imports `cellvit_cli.cli.<name>` when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return getattr(importlib.import_module(f"cellvit_cli.cli.{name}"), name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellvit")
def main() -> None:
    """Instance segmentation of cells and nuclei in microscopy TIFFs.

    \b
    Example:
      cellvit segment sample_data -o out
      cellvit evaluate --pred out --gt sample_data/masks -o report
    """
