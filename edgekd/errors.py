"""The one exception type for user mistakes (bad path, bad value, corrupt file).

The CLI prints its message on one line and exits non-zero, without a stack trace.
Raise it with a message that says what was wrong and what to do instead.
"""


class EdgeKDError(Exception):
    """A user-facing error: the message is shown as is, with no traceback."""
