"""Progress in the user's unit: a Keras progress bar on a terminal, plain periodic lines otherwise.

Keras' `Progbar` redraws one line with carriage returns and ANSI colour escapes, and it does so
even when the output is a file (it treats every POSIX process as a terminal), so a redirected
log fills with ``\\r``, ``\\x1b[1m`` and bar characters. `Progress` keeps the bar where it belongs,
on a terminal (``sys.stdout.isatty()``, where Keras draws it), and otherwise logs one plain line
every `interval_s` seconds and one at the end, e.g.

    12:04:31 INFO common.progress: knockoff: 1,500/5,000 queries (30%), 24.8 queries/s, ETA 2m21s

`keras_verbose()` is the same choice for `model.fit`: 1 (the bar) on a terminal, 2 (one plain
line per epoch) when redirected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import IO, Any

__all__ = ["Progress", "interactive", "keras_verbose"]

log = logging.getLogger(__name__)


def interactive(stream: IO[Any] | None = None) -> bool:
    """Whether `stream` (default `sys.stdout`, where Keras draws) is a terminal."""
    import sys

    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def keras_verbose(stream: IO[Any] | None = None) -> int:
    """`verbose` for `keras.Model.fit`: 1 (progress bar) on a terminal, 2 (a line per epoch)."""
    return 1 if interactive(stream) else 2


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Report `done` out of `total` units: `update(done)` as work finishes, `close()` at the end.

    Args:
        total: units of the whole job (queries, images, ...); at least 1.
        unit: the unit's name, singular ("query" -> "queries" in the lines).
        what: what is progressing, at the start of each plain line ("knockoff").
        interval_s: seconds between plain lines (the first update and the last always log).
        stream: decides bar or lines (default `sys.stdout`, where Keras draws the bar).
        clock: seconds, monotonic (tests pass a fake one).

    Thread-safe: `update` may be called from worker threads.
    """

    def __init__(self, total: int, *, unit: str = "query", what: str = "",
                 interval_s: float = 15.0, stream: IO[Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(int(total), 1)
        self.unit = unit
        self.what = what
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._last_logged: float | None = None
        self._last_done = -1
        self._logged_done = -1
        self._bar = None
        if interactive(stream):
            import keras

            self._bar = keras.utils.Progbar(target=self.total, unit_name=unit)

    @property
    def plural(self) -> str:
        if self.unit.endswith("y") and self.unit[-2:-1] not in "aeiou":
            return self.unit[:-1] + "ies"
        return self.unit + ("es" if self.unit.endswith(("s", "x", "ch", "sh")) else "s")

    def line(self, done: int, now: float | None = None) -> str:
        """The plain progress line for `done` units at time `now`."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed
        share = 100.0 * done / self.total
        text = f"{done:,}/{self.total:,} {self.plural} ({share:.0f}%), {rate:.1f} {self.plural}/s"
        if 0 < done < self.total and rate > 0:
            text += f", ETA {_duration((self.total - done) / rate)}"
        elif done >= self.total:
            text += f", {_duration(elapsed)} in all"
        return f"{self.what}: {text}" if self.what else text

    def update(self, done: int) -> None:
        """Record that `done` units (cumulative) are finished."""
        with self._lock:
            done = int(done)
            self._last_done = max(self._last_done, done)
            if self._bar is not None:
                self._bar.update(self._last_done)
                return
            now = self._clock()
            due = (self._last_logged is None or self._last_done >= self.total
                   or now - self._last_logged >= self.interval_s)
            if due and self._last_done != self._logged_done:
                log.info("%s", self.line(self._last_done, now))
                self._last_logged = now
                self._logged_done = self._last_done

    def close(self) -> None:
        """Log the last state if the periodic lines have not shown it yet."""
        with self._lock:
            if self._bar is None and self._last_done >= 0 \
                    and self._last_done != self._logged_done:
                log.info("%s", self.line(self._last_done))
                self._logged_done = self._last_done

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
