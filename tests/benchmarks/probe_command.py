"""A tiny command for the plan tests: prints its message, exits with its code.

`python -m tests.benchmarks.probe_command --message M --exit-code N`, parsed from `ProbeConfig`
by `common.cli` like every command of the toolkit, so a `benchmarks.harness.Command` can run it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.cli import parse_config, run_cli

PROG = "python -m tests.benchmarks.probe_command"


@dataclass(frozen=True)
class ProbeConfig:
    """Print a message and exit with a code."""

    message: str = field(default="ran", metadata={"help": "the line printed on stdout"})
    error: str | None = field(default=None, metadata={"help": "a line printed on stderr"})
    exit_code: int = field(default=0, metadata={"help": "the exit code"})


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: Sequence[str] | None) -> int:
        config = parse_config(ProbeConfig, args, prog=PROG)
        print(config.message, flush=True)
        if config.error:
            print(config.error, file=sys.stderr, flush=True)
        return config.exit_code

    return run_cli(body, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
