"""One-line error messages: :func:`one_line` (used by every package's user-facing errors) and :class:`PolicyError`."""

from __future__ import annotations

__all__ = ["PolicyError", "one_line"]


def one_line(value: object) -> str:
    """``value`` as one printable line.

    An exception becomes ``Type: first line of its message`` (for reports that wrap another library's error);
    anything else its ``str``. Control characters left in the text are escaped (``\\n``, ``\\x00``), so a
    message built from user input stays on one line.
    """
    if isinstance(value, BaseException):
        lines = str(value).strip().splitlines()
        value = f"{type(value).__name__}: {lines[0]}" if lines else type(value).__name__
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


class PolicyError(ValueError):
    """A policy document is malformed; the message (always one printable line) names the offending field."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))
