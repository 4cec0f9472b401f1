"""Options defined once: a command's option takes its default from the settings dataclass
field it fills, and a bad value is that dataclass's own `SettingError`, shown as a usage
error naming the option."""

import click

from cellvit_cli.settings import SettingError, default_of


def flag_of(name: str) -> str:
    """The option of a settings field: tile_size -> --tile-size."""
    return "--" + name.replace("_", "-")


def setting_option(cls, flag: str, **options):
    """A click option filling field `flag` (--tile-size: tile_size) of dataclass `cls`, with
    that field's default."""
    name = flag.lstrip("-").replace("-", "_")
    return click.option(flag, name, default=default_of(cls, name), **options)


def build(cls, **values):
    """`cls(**values)`; its SettingError becomes click.BadParameter naming the option of the
    field at fault (a UsageError when several fields clash)."""
    try:
        return cls(**values)
    except SettingError as err:
        if len(err.names) == 1:
            raise click.BadParameter(str(err), param_hint=f"'{flag_of(err.names[0])}'") from err
        raise click.UsageError(str(err)) from err
