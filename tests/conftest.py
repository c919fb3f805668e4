"""Test-wide settings: no test reaches the network, TensorFlow stays quiet; the fuzz summary."""

import os
import sys

os.environ.setdefault("MEXT_OFFLINE", "1")  # tensorflow-datasets: never try to download
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_terminal_summary(terminalreporter):
    """One line: how many malformed requests the fuzz tests that ran sent, in how many tests."""
    serving_conftest = sys.modules.get("tests.serving.conftest")
    counts = getattr(serving_conftest, "FUZZ_REQUESTS", None)
    if counts:
        terminalreporter.write_line(f"fuzzing: {sum(counts.values())} requests in "
                                    f"{len(counts)} fuzz tests (server, gateway, REST)")
