"""The one exception type the CLI turns into a single 'error: ...' line and a non-zero exit."""


class FlashdecodeError(Exception):
    """A problem with the user's input or set-up; the message names the problem and the fix."""
