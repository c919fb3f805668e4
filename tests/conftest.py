"""Test-wide settings: no test reaches the network, TensorFlow stays quiet; the fuzz summary."""

import os

os.environ.setdefault("MEXT_OFFLINE", "1")  # tensorflow-datasets: never try to download
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_FUZZ_REQUESTS: dict[str, int] = {}  # test id -> malformed requests it sent


def pytest_runtest_logreport(report):
    """Collect each fuzz test's `fuzz_requests` (from its own process or an xdist worker)."""
    if report.when == "teardown":
        for name, value in report.user_properties:
            if name == "fuzz_requests":
                _FUZZ_REQUESTS[report.nodeid] = value


def pytest_terminal_summary(terminalreporter):
    """One line: how many malformed requests the fuzz tests that ran sent, in how many tests."""
    if _FUZZ_REQUESTS:
        terminalreporter.write_line(f"fuzzing: {sum(_FUZZ_REQUESTS.values())} requests in "
                                    f"{len(_FUZZ_REQUESTS)} fuzz tests (server, gateway, REST)")
