"""Progress bars that step aside for an error: a bar stays on screen once its work is done, and is wiped where an
error or Ctrl-C ends it, so that the one-line message printed next starts its own line and stands alone (tqdm
would draw the bar once more on closing, after the message)."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

__all__ = ["close_bar", "progress_bar", "print_beside_bars"]


def close_bar(bar: tqdm, failed: bool) -> None:
    """Close ``bar``: left on screen, or, where ``failed`` (an error or Ctrl-C ended its work), wiped from it.
    Closing a bar twice does nothing more."""
    if failed:
        bar.leave = False
    bar.close()


@contextmanager
def progress_bar(*args: Any, **kwargs: Any) -> Iterator[tqdm]:
    """``tqdm(*args, **kwargs)`` for a ``with`` block: closed at its end, wiped where an exception leaves it."""
    bar = tqdm(*args, **kwargs)
    try:
        yield bar
    except BaseException:
        close_bar(bar, failed=True)
        raise
    close_bar(bar, failed=False)


def print_beside_bars(line: str) -> None:
    """Print ``line`` on stderr on a line of its own, also while a progress bar is drawn there: the bar steps
    aside and is drawn again below it (``tqdm.write``), instead of the line running on from the bar's text."""
    tqdm.write(line, file=sys.stderr)
