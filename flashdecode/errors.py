"""The one exception type the CLI turns into a single 'error: ...' line and a non-zero exit, and how text from
files and file names is shown on a terminal or in a log.

Names and metadata come from whoever made the file: an escape sequence in them could clear the screen or set the
title, a newline could forge an `error:` line. So every such text is shown through `shown` (or `listed`) where it
is put into a message, and the CLI passes every line it prints through `printable` as a last guard.
"""
from __future__ import annotations

LISTED = 10  # how many names a message lists before it says "... and N more"


class FlashdecodeError(Exception):
    """A problem with the user's input or set-up; the message names the problem and the fix."""


def shown(text, limit: int | None = None) -> str:
    """A name or a metadata value as a message shows it: as it is when every character prints, else repr-quoted
    with escapes ('clip\\x1b[2J.npy'), so it stays on its line and cannot drive the terminal. `limit`: at most
    that many characters of it, then how many more there are."""
    text = str(text)
    more = len(text) - limit if limit is not None and len(text) > limit else 0
    if more:
        text = text[:limit]
    text = text if text.isprintable() else repr(text)
    return f"{text}... ({more:,} more characters)" if more else text


def listed(names, limit: int = LISTED) -> str:
    """'a, b, c' for a few names; the first `limit` and '... and 19,990 more' for many (one line, bounded)."""
    names = [shown(n) for n in names]
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])}, ... and {len(names) - limit:,} more"


def printable(line: str) -> str:
    """A whole line with every character that does not print (newline, CR, ESC, BEL, a lone surrogate from an
    undecodable file name...) escaped in place: one line out, whatever went in."""
    if line.isprintable():
        return line
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def first_line(e: BaseException) -> str:
    """The first line of a library's error message (its type's name when the message is empty), shown and cut:
    enough to say what went wrong in one of our sentences."""
    return shown((str(e).strip().splitlines() or [type(e).__name__])[0], 200)
