"""The `flashdecode` command line: a thin layer over the Python API. One file per command group."""
from __future__ import annotations

import typer
from typer.core import TyperArgument, TyperGroup

from .. import __version__

# Help as click writes it: INPUT in the usage line, value names (TEXT, PATH) beside options, nothing beside
# flags; typer's own "{input}" and "<str>"/"<bool>" tags read as noise.
_VALUE_NAMES = {"<str>": "TEXT", "<int>": "INTEGER", "<float>": "FLOAT", "<Path>": "PATH"}


def _plain_help(params, ctx) -> None:
    for param in params:
        if isinstance(param, TyperArgument):
            name = param.name.upper() + ("..." if param.nargs != 1 else "")
            param.metavar = name
            param.get_usage_pieces = lambda ctx, shown=name if param.required else f"[{name}]": [shown]
            param.display_type_rich = lambda ctx: None
        elif getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.display_type_rich = lambda ctx: None
        elif param.metavar is None and hasattr(param, "display_type"):
            tag = param.display_type(ctx)
            param.metavar = _VALUE_NAMES.get(tag, tag.strip("<>").upper())


class _Group(TyperGroup):
    def get_params(self, ctx):
        params = super().get_params(ctx)
        _plain_help(params, ctx)
        return params

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is not None:
            _plain_help(command.get_params(ctx), ctx)
        return command


app = typer.Typer(
    name="flashdecode",
    cls=_Group,
    help="Fast, memory-bounded streaming decoder for Wan2.1/Wan2.2 video latents (FlashDecoder).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"flashdecode {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Fast, memory-bounded streaming decoder for Wan2.1/Wan2.2 video latents (FlashDecoder)."""


# Each module registers its commands on `app` when imported.
from . import bench, decode, models, train, encode  # noqa: E402,F401
