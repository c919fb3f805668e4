"""Fixtures for the serving tests: tiny SavedModels on disk and an embedded server over them.

`model_base`: the models of `tests/serving/tiny_models.py` (`tiny` in versions 1 and 2 with
different weights, `examples`) exported once per session; `server`: the embedded server over a
copy of them (gRPC and REST), started by `serving.testing` once per module; `channel`, `stub`,
`model_stub`: gRPC to it; `held_port`: a loopback port with a live listener.

Fuzz tests take `fuzz_tally`: their own count of what they sent and how each request ended (no
tally is shared between tests, so none depends on another's order); `pytest -n 0 -s` prints each
table, and the run's summary line adds up the requests of every fuzz test that ran (also
across pytest-xdist workers: the count travels as a user property of the test's report).
"""

from __future__ import annotations

import collections
import shutil
import socket

import grpc
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving import testing
from serving.status import GRPC_MAX_MESSAGE_BYTES
from tests.serving import tiny_models

IMAGE_SHAPE = tiny_models.IMAGE_SHAPE  # tests/serving/test_deploy.py imports it from here


@pytest.fixture(scope="session")
def model_base(tmp_path_factory):
    """A models folder: `tiny` (versions 1, 2) and `examples` (version 1), with Keras models."""
    base = tmp_path_factory.mktemp("models")
    models = {version: tiny_models.export_tiny(base, "tiny", version, seed=version)
              for version in (1, 2)}
    tiny_models.export_examples_model(base / "examples" / "1")
    return base, models


@pytest.fixture(scope="module")
def server(model_base, tmp_path_factory):
    """The embedded server (`ModelServer`) on loopback with gRPC and REST, over a copy of
    `model_base`; `.base` is that copy, `.keras_models` the Keras models by version."""
    src, models = model_base
    base = tmp_path_factory.mktemp("served")
    shutil.copytree(src, base, dirs_exist_ok=True)
    config = base / "models.config"
    config.write_text(tiny_models.models_config_text(base))
    with testing.model_server(config_file=config, rest=True, poll_seconds=0.2) as running:
        srv = running.obj
        srv.base = base
        srv.keras_models = models
        yield srv


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
                 ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES)])
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture()
def held_port():
    """A loopback port with a live listener on it (what another server would hold)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# -- fuzzing: a tally per test ------------------------------------------------------------------
class FuzzTally:
    """What one fuzz test sent: `outcomes[kind, code]` counts requests by how they ended,
    `notes[what]` counts notable request kinds (not requests of their own)."""

    def __init__(self) -> None:
        self.outcomes: collections.Counter = collections.Counter()
        self.notes: collections.Counter = collections.Counter()

    def add(self, kind: str, code: str, n: int = 1) -> None:
        self.outcomes[kind, code] += n

    def count(self, kind: str | None = None, code: str | None = None) -> int:
        """Requests of `kind` (all kinds when None) that ended in `code` (any when None)."""
        return sum(n for (k, c), n in self.outcomes.items()
                   if (kind is None or k == kind) and (code is None or c == code))

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def table(self) -> str:
        lines = [f"  {kind:<40} {code:<28} {n:>6}"
                 for (kind, code), n in sorted(self.outcomes.items())]
        lines += [f"  {what:<69} {n:>6}" for what, n in sorted(self.notes.items())]
        return "\n".join(lines)


@pytest.fixture
def fuzz_tally(request):
    """A fresh `FuzzTally` for this test; printed (with `pytest -n 0 -s`) and, as the test's
    `fuzz_requests` user property, summed by tests/conftest.py at the end of the run."""
    tally = FuzzTally()
    yield tally
    request.node.user_properties.append(("fuzz_requests", tally.requests))
    print(f"\n{request.node.name}: {tally.requests} requests\n{tally.table()}")
