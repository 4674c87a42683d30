"""The `flashdecode` console script (and `python -m flashdecode`).

The commands' own imports (torch, PyAV) take a second or more. A Ctrl-C in that window would print a
traceback through the import machinery, so start-up is wrapped here: the package's __init__ is lazy, so
this module loads in milliseconds and the wrap covers nearly all of start-up. Inside a command,
cli/common.run_guarded takes over (the command's outputs are closed by then).
"""
from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from .cli import app
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    try:
        app(prog_name="flashdecode")
    except KeyboardInterrupt:  # between start-up and a command's run_guarded (option parsing)
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:
        # typer turns a Ctrl-C while it builds or parses the command into a silent exit 130 (an Exit raised
        # from the KeyboardInterrupt); say it, like run_guarded does once the command runs
        if isinstance(e.__context__, Exception) and isinstance(e.__context__.__cause__, KeyboardInterrupt):
            print("interrupted", file=sys.stderr, flush=True)
        raise


if __name__ == "__main__":
    main()
