"""Errors a user can fix by changing what they passed.

Every CLI of the toolkit turns a `UsageError` into one line on stderr and exit code 2; the Python
API raises it before any side effect (no directory created, no query sent). Messages follow
Keras' style: they name the argument, what was expected and what was received.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A bad argument, file or dataset spec. `str(err)` is the one line the CLI prints."""


def invalid(argument: str, received: object, expected: str) -> UsageError:
    """The standard message: ``Invalid value for argument `x`. Received: x=.... Expected ...``."""
    return UsageError(
        f"Invalid value for argument `{argument}`. Received: {argument}={received!r}. "
        f"Expected {expected}."
    )
