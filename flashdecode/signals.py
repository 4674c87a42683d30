"""SIGTERM and SIGHUP stop a decode the way Ctrl-C does: an exception in the main thread, so every `finally`
flushes its outputs and what is on disk is a playable file.

`timeout`, docker and systemd send SIGTERM; a closed terminal sends SIGHUP. Python's default for both is to
die on the spot, losing the encoder's buffered frames. Only the first signal raises: a second one while the
outputs are being flushed is ignored, so the flush finishes (SIGKILL still ends the process at once).

`interrupt_in` finds a Ctrl-C that a library wrapped in another exception; the console script (start-up) and
cli/common (inside a command) both ask it, so it lives here, below both.
"""
from __future__ import annotations

import contextlib
import signal
import threading

STATUS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hangup"}
HANDLED = (signal.SIGTERM, signal.SIGHUP)
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, what a shell reports for a Ctrl-C


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal; `status` ('terminated', 'hangup') and `exit_code` (128 + the signal)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.status = STATUS.get(signum, "interrupted")
        self.exit_code = 128 + signum


def stop_status(exc: BaseException) -> tuple[str, int]:
    """('interrupted', 130) for Ctrl-C, ('terminated', 143) for SIGTERM, ('hangup', 129) for SIGHUP."""
    if isinstance(exc, Interrupted):
        return exc.status, exc.exit_code
    return "interrupted", EXIT_INTERRUPTED


def interrupt_in(exc: BaseException | None) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt behind `exc`, itself or in its __cause__/__context__ chain (e.g. a RuntimeError
    that Python raised because the interrupt landed in a class body being built), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__
    return None


@contextlib.contextmanager
def stop_on_signals():
    """Turn SIGTERM/SIGHUP into `Interrupted` while the block runs (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum, _frame):
        nonlocal raised
        if not raised:  # later signals arrive while outputs are flushed: let the flush finish
            raised = True
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
