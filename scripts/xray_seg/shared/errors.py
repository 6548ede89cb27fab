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


def input_error_in(error: BaseException, name: str = "ImageReadError") -> str | None:
    """The message of the input error (exception class ``name``) behind ``error``, or None.

    A transform's error reaches the engine wrapped by MONAI (``RuntimeError: applying
    transform ...`` from the original); from a DataLoader worker process PyTorch re-raises
    it with the worker's formatted traceback as its message, whose last ``name: ...``
    line is the original message. Both are looked through.
    """
    marker = f"{name}: "
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen)
        lines = [line for line in text.splitlines() if marker in line and not line[:1].isspace()]
        if "Original Traceback" in text and lines:
            return lines[-1].split(marker, 1)[1]
        if type(seen).__name__ == name:
            return text
        seen = seen.__cause__ or seen.__context__
    return None
