"""One rule for bad input everywhere: a single ``ERROR:`` line on stderr, exit status 2.

Bundle configs run inside ``python -m monai.bundle run``, which would bury an input
error under a page of config-parser traceback; the command-line verbs would print a
Python traceback. Both call through here instead.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn, TypeVar

T = TypeVar("T")

EXIT_BAD_INPUT = 2


class UserError(ValueError):
    """A problem the user can fix (bad input, bad option); the message says what and where."""


# The errors that mean "bad input" rather than "bug": their messages name the file.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                                  PermissionError)


def fail(message: str) -> NoReturn:
    """Print ``ERROR: message`` and exit with status 2. Only the first line carries the
    prefix; further lines (a list of the files concerned, a hint) follow it."""
    print(f"ERROR: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def or_exit(fn: Callable[[], T], errors: tuple[type[BaseException], ...] = INPUT_ERRORS) -> T:
    """``fn()``, with an input error turned into one ``ERROR:`` line and exit status 2."""
    try:
        return fn()
    except errors as err:
        fail(str(err))
