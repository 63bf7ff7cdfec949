"""The one exception type the CLI turns into a one-line message and exit status 2."""
from __future__ import annotations

__all__ = ["CovsegError"]


class CovsegError(Exception):
    """A problem with the user's input: the message names what is wrong and how to fix it."""
