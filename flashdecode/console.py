"""The `flashdecode` console script (and `python -m flashdecode`).

The commands' own imports (torch above all) take a second or more. A Ctrl-C that lands inside an import
can surface as anything: a KeyboardInterrupt through the import machinery, a RuntimeError wrapping it (when
it hits a class body's __set_name__), or nothing at all when a library's `except Exception` around an
optional import swallows it and the command then runs on as if no key was pressed. So start-up holds a
Ctrl-C back: the package's __init__ is lazy (this module loads in milliseconds), and while the CLI and torch
are imported here a SIGINT is only recorded, then honoured as exit 130 with one line. Inside a command,
cli/common.run_guarded takes over (the command's outputs are closed by then).
"""
from __future__ import annotations

import signal
import sys

from .signals import EXIT_INTERRUPTED, interrupt_in

HELP_FLAGS = ("-h", "--help", "--version")


def _interrupted() -> None:
    print("interrupted", file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)


def _start_up(argv: list[str]):
    """Import the CLI (and torch, unless only help or the version is asked for) with Ctrl-C held back."""
    pressed = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # leave an ignored SIGINT (nohup, `cmd &`) or a custom one alone
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        from .cli import app

        if argv and not any(a in HELP_FLAGS for a in argv):
            import torch  # noqa: F401  every command needs it; imported here, a Ctrl-C cannot land inside it
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
    if pressed:
        _interrupted()
    return app


def main() -> None:
    try:
        app = _start_up(sys.argv[1:])
    except BaseException as e:  # a Ctrl-C before the hold was in place (or while it was being lifted)
        if interrupt_in(e) is not None:
            _interrupted()
        raise
    try:
        app(prog_name="flashdecode")
    except SystemExit as e:
        # typer turns a Ctrl-C while it builds or parses the command into a silent exit 130 (an Exit raised
        # from the KeyboardInterrupt); say it, like run_guarded does once the command runs
        if e.code == EXIT_INTERRUPTED and isinstance(e.__context__, Exception) and interrupt_in(e.__context__.__cause__):
            print("interrupted", file=sys.stderr, flush=True)
        raise
    except BaseException as e:  # between start-up and a command's run_guarded, or wrapped by a library
        if interrupt_in(e) is not None:
            _interrupted()
        raise


if __name__ == "__main__":
    main()
