"""The exception types the CLI turns into one line: :class:`CovsegError` (exit status 2) and :class:`Terminated`
(exit status 143)."""
from __future__ import annotations

__all__ = ["CovsegError", "Terminated", "stop_word"]


class CovsegError(Exception):
    """A problem with the user's input: the message names what is wrong and how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a batch scheduler, ``docker stop``) as the ``covseg`` program raises it: a
    :class:`KeyboardInterrupt`, so that every path that cleans up after Ctrl-C (a half-written output removed, the
    old run put back after ``train --force``, an interrupted training's epochs kept) runs for it too."""


def stop_word(stop: KeyboardInterrupt) -> str:
    """How a line names what stopped the program: ``terminated (SIGTERM)`` for :class:`Terminated`, else
    ``interrupted`` (Ctrl-C)."""
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
