"""Errors a user can fix by changing what they passed.

Every CLI of the toolkit turns a `UsageError` into one line on stderr and exit code 2; the Python
API raises it before any side effect (no directory created, no query sent). Messages follow
Keras' style: they name the argument, what was expected and what was received. An error made by
`invalid` also keeps those three parts (`argument`, `received`, `expected`), so a command line
can say them again in its own words: `common.cli.run_cli` names the flag the user typed
(``--target-fpr``, ``--transfer-set``) where the Python API names the parameter.
"""

from __future__ import annotations

__all__ = ["UsageError", "invalid"]

_UNSET = object()


class UsageError(ValueError):
    """A bad argument, file or dataset spec. `str(err)` is the one line the CLI prints.

    `argument`, `received` and `expected` are set when the error is about one argument (as
    `invalid` makes it); otherwise `argument` is None.
    """

    def __init__(self, message: str, *, argument: str | None = None,
                 received: object = _UNSET, expected: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.received = None if received is _UNSET else received
        self.has_received = received is not _UNSET
        self.expected = expected


def invalid(argument: str, received: object, expected: str) -> UsageError:
    """The standard message: ``Invalid value for argument `x`. Received: x=.... Expected ...``."""
    return UsageError(
        f"Invalid value for argument `{argument}`. Received: {argument}={received!r}. "
        f"Expected {expected}.",
        argument=argument, received=received, expected=expected,
    )
