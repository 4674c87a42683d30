"""The `flashdecode` command line: a thin layer over the Python API. One file per command group."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="flashdecode",
    help="Fast, memory-bounded streaming decoder for Wan2.1/Wan2.2 video latents (FlashDecoder).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module registers its commands on `app` when imported.
from . import bench, decode, models, train, encode  # noqa: E402,F401
