"""serving.rest_client: TF Serving's REST metadata and :predict, against the embedded server's
REST port, compared with the gRPC client on the same server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from common.errors import UsageError
from serving import testing
from serving.client import ServingClient, ServingError
from serving.rest_client import RestClient


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("rest_models")
    testing.export_tiny_classifier(base, "tiny", export_logits=True)
    with testing.model_server(base_path=base / "tiny", name="tiny", rest=True) as server:
        yield server


def images(n: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 8, 8, 3)).astype(np.uint8)


def test_signature_and_answers_match_grpc(served):
    url = f"http://127.0.0.1:{served.rest_port}"
    with ServingClient(served.target, "tiny") as grpc_client, \
            RestClient(url, "tiny", batch_size=3, max_in_flight=2) as rest:
        assert rest.signature() == grpc_client.signature()
        info = grpc_client.metadata()
        sent = []
        got = []
        out = rest.predict(images(7), info, ["probabilities", "logits"],
                           on_send=lambda f, n: sent.append((f, n)),
                           on_result=lambda f, d: got.append((f, sorted(d))))
        expected = grpc_client.predict(images(7), outputs=["probabilities", "logits"])
        for name in ("probabilities", "logits"):
            np.testing.assert_allclose(out[name], expected[name], rtol=1e-6)
        assert sorted(sent) == [(0, 3), (3, 3), (6, 1)]
        assert sorted(got)[0] == (0, ["logits", "probabilities"])
        assert rest.queries == 7 and rest.requests == 1 + 3  # metadata + three batches


def test_a_failing_on_result_stops_the_next_batch_from_being_sent(served):
    url = f"http://127.0.0.1:{served.rest_port}"
    with ServingClient(served.target, "tiny") as grpc_client:
        info = grpc_client.metadata()
    for _ in range(5):
        sent = []

        def on_result(first, decoded):
            raise RuntimeError("journal full")

        with RestClient(url, "tiny", batch_size=2, max_in_flight=1) as rest:
            with pytest.raises(RuntimeError, match="journal full"):
                rest.predict(images(8), info, ["probabilities"],
                             on_send=lambda f, n: sent.append(f), on_result=on_result)
        assert sent == [0]


def test_errors_carry_the_status_code_and_name_the_argument(served):
    url = f"http://127.0.0.1:{served.rest_port}"
    with RestClient(url, "missing") as rest, pytest.raises(ServingError) as err:
        rest.signature()
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "missing" in str(err.value)
    with RestClient(url, "tiny", signature="nope") as rest:
        with pytest.raises(UsageError, match=r"`signature`.*'nope'.*\['serving_default'\]"):
            rest.signature()
    for bad in ("localhost:8501", "http://h:1/v1/models", "ftp://h:1", "http://h:99999"):
        with pytest.raises(UsageError, match="`rest`"):
            RestClient(bad, "tiny")
    rest = RestClient(url, "tiny")
    rest.close()
    with pytest.raises(RuntimeError, match="closed"):
        rest.signature()


def test_unreachable_server_is_unavailable_after_retries():
    port = testing.pick_unused_port()
    with RestClient(f"http://127.0.0.1:{port}", "tiny", retries=1, backoff=0.01) as rest:
        with pytest.raises(ServingError, match="UNAVAILABLE"):
            rest.signature()
