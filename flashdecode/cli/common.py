"""What every command shares: turning expected failures into one line and an exit code, never a traceback.

    @app.command()
    @run_guarded
    def cmd(...): ...          # or: with run_guarded(): ...

FlashdecodeError -> "error: <message>" on stderr, exit 2. Ctrl-C -> exit 130 (the command's own
`finally` blocks have already closed its outputs). A closed stdout pipe (`... | head`) -> exit 141
(128 + SIGPIPE, what a shell reports for a tool killed by the pipe), silently.
"""
from __future__ import annotations

import contextlib
import os
import sys

import typer

from ..errors import FlashdecodeError, printable
from ..signals import EXIT_INTERRUPTED, interrupt_in

EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 141


def error(message: str) -> None:
    """One line, always: a newline or an escape sequence from a file name cannot forge or hide another line."""
    print(f"error: {printable(message)}", file=sys.stderr, flush=True)


def note(message: str) -> None:
    print(f"note: {printable(message)}", file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so Python's exit-time flush does not hit the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class _Guard(contextlib.ContextDecorator):
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, FlashdecodeError):
            error(str(exc))
            raise typer.Exit(EXIT_ERROR) from None
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr, flush=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        if not isinstance(exc, typer.Exit) and interrupt_in(exc) is not None:  # a Ctrl-C that a library wrapped (e.g. in a RuntimeError mid-import)
            print("interrupted", file=sys.stderr, flush=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        return False


def parse_hw(text: str | None, option: str = "--size") -> tuple[int, int] | None:
    """'256x448' -> (256, 448) as (height, width); each a positive multiple of 16 (one latent cell)."""
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FlashdecodeError(f"{option} {text!r} is not HxW; write e.g. {option} 256x448 (height x width)") from None
    if h < 16 or w < 16:
        raise FlashdecodeError(f"{option} {h}x{w}: height and width must be at least 16 (one latent cell)")
    if h % 16 or w % 16:
        raise FlashdecodeError(f"{option} {h}x{w} is not a multiple of 16; use e.g. {h - h % 16}x{w - w % 16}")
    return h, w


def check_frames(frames: int | None, option: str = "--frames") -> None:
    """Pixel frame counts are 4k+1: the first latent frame covers 1 pixel frame, each later one 4."""
    if frames is not None and (frames < 1 or (frames - 1) % 4):
        raise FlashdecodeError(f"{option} {frames} is not 4k+1 (1, 5, 9, ..., 4k+1): latents cover 1 frame, then 4 each")


def run_guarded(func=None):
    """Use as `@run_guarded`, `@run_guarded()` or `with run_guarded():`."""
    return _Guard()(func) if callable(func) else _Guard()
