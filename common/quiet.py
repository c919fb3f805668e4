"""Quiet start-up for the command lines: TensorFlow's C++ and absl start-up lines off by default.

TensorFlow 2.21 writes, while it is imported and when it first looks for devices, lines that tell
a CPU user nothing: "WARNING: All log messages before absl::InitializeLog() is called are written
to STDERR", oneDNN's notice (port.cc), "Could not find cuda drivers" (cudart_stub.cc), the CPU
feature notice (cpu_feature_guard.cc) and an error-level "failed call to cuInit" (cuda_platform.cc)
on a machine without a GPU. C++ writes them to file descriptor 2 before TensorFlow's own log
level is read, so `TF_CPP_MIN_LOG_LEVEL` alone does not remove them.

`configure()` (called by every command line once its flags are parsed, before anything imports
TensorFlow) sets `TF_CPP_MIN_LOG_LEVEL=2` unless the user set it, lowers Python's `absl` logger to
errors, and arranges that the first ``import tensorflow`` of the process runs with file descriptor
2 captured: exactly the known start-up lines above are dropped, anything else written meanwhile
(an unexpected warning, an import error) is written back. Nothing is hidden after start-up.

The switch that brings everything back: ``--verbose`` on a command line, or ``MEXT_VERBOSE=1``
in the environment (inherited by the processes a command starts).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["VERBOSE_ENV", "add_verbose_argument", "configure", "filtered_stderr",
           "is_startup_noise", "is_verbose"]

VERBOSE_ENV = "MEXT_VERBOSE"

log = logging.getLogger(__name__)

# The lines TensorFlow/absl/CUDA print at start-up on a machine that runs on CPU: the absl
# pre-initialisation banner, then glog-style lines from the C++ files named here.
_NOISE = re.compile(
    r"^(?:WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:.]+\s+\d+ (?:port|cudart_stub|cpu_feature_guard|cuda_platform|"
    r"cuda_executor|cuda_diagnostics|gpu_device|dso_loader)\.cc:\d+\] "
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    r"compiler flags\.)"
)


def is_verbose() -> bool:
    """Whether the user asked for TensorFlow's start-up output (`MEXT_VERBOSE` set, not 0)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def is_startup_noise(line: str) -> bool:
    """Whether `line` is one of the known TensorFlow/absl/CUDA start-up lines."""
    return bool(_NOISE.match(line))


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 for the block; write back every line but the start-up noise.

    Works on the descriptor, not on `sys.stderr`, since the lines come from C++. Lines written
    by other threads meanwhile are kept (written back when the block ends).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if not is_startup_noise(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader's `exec_module` inside `filtered_stderr`, then lets TensorFlow
    look for devices (where "failed call to cuInit" is printed) inside it too."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):  # noqa: ANN001 - importlib protocol
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001 - importlib protocol
        with filtered_stderr():
            self._loader.exec_module(module)
            with contextlib.suppress(Exception):
                module.config.list_physical_devices()

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first ``import tensorflow`` it wraps the real loader."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname != "tensorflow":
            return None
        _remove_finder()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and not is_verbose():
            spec.loader = _QuietLoader(spec.loader)
        return spec


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowFinder)]


def configure(verbose: bool | None = None) -> bool:
    """Set up a command's start-up output before TensorFlow is imported; returns `is_verbose()`.

    `verbose=True` (a ``--verbose`` flag) sets `MEXT_VERBOSE=1` for this process and its
    children; None or False keeps the environment's choice. Quiet (the default): set
    `TF_CPP_MIN_LOG_LEVEL=2` unless already set, Python's `absl` logger to errors, and filter
    the first TensorFlow import's start-up lines. Verbose: none of that. Safe to call again.
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    if is_verbose():
        _remove_finder()
        return True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
    return False


def add_verbose_argument(parser) -> None:  # noqa: ANN001 - an argparse.ArgumentParser
    """Add ``--verbose`` (see `configure`) to a command's parser."""
    parser.add_argument("--verbose", action="store_true", default=False,
                        help="show TensorFlow's start-up and C++ log lines "
                             f"(also: {VERBOSE_ENV}=1)")
