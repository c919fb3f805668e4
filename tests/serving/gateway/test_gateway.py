"""The gateway in front of the embedded model server: auth, limits, pass-through, faults, health."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_management_pb2,
)

from serving import codec, testing
from serving.gateway.config import GatewayPolicy
from serving.gateway.metrics import METRIC_NAMES
from serving.gateway.store import RedisStore, SQLiteStore
from tests.serving.gateway.conftest import Target, add_client, images, predict_request


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code(), info.value.details()


# -- auth ------------------------------------------------------------------------------------------

def test_missing_unknown_and_revoked_keys_are_unauthenticated(gateway):
    gw = gateway()
    key = add_client(gw.store, "alice")
    address = f"127.0.0.1:{gw.port}"
    code, details = _code(Target(address).predict, images(1))
    assert code is grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in details
    assert _code(Target(address, "mxk_not-a-key").predict, images(1))[0] is \
        grpc.StatusCode.UNAUTHENTICATED
    Target(address, key).predict(images(1))  # valid
    gw.store.revoke("alice")
    assert _code(Target(address, key).predict, images(1))[0] is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("alter", [str.upper, lambda k: k + " ", lambda k: " " + k,
                                   lambda k: k[:-1], lambda k: k + "\t"])
def test_altered_key_is_another_unknown_key(gateway, alter):
    gw = gateway()
    key = add_client(gw.store, "alice", budget=5)
    code, _ = _code(Target(f"127.0.0.1:{gw.port}", alter(key)).predict, images(1))
    # gRPC itself refuses some values client-side (INTERNAL "Illegal header value")
    assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL)
    assert gw.store.usage("alice") == 0
    assert all(r.code != "OK" for r in gw.store.audit_records())


def test_bearer_header_and_answer_bytes_identical_to_direct(gateway, server):
    gw = gateway()
    key = add_client(gw.store, "alice")
    request = predict_request(images(3, seed=7)).SerializeToString()
    direct = Target(f"127.0.0.1:{server.port}").predict_raw(request)
    for header in ("x-api-key", "authorization"):
        through = Target(f"127.0.0.1:{gw.port}", key, header=header).predict_raw(request)
        assert through == direct


def test_key_is_never_stored_or_audited(gateway, tmp_path):
    gw = gateway()
    key = add_client(gw.store, "alice")
    Target(f"127.0.0.1:{gw.port}", key).predict(images(2))
    _code(Target(f"127.0.0.1:{gw.port}", key + "x").predict, images(2))
    gw.stop()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("gateway.db*"))
    assert key.encode() not in raw and (key + "x").encode() not in raw
    records = gw.store.audit_records()
    assert [r.code for r in records] == ["OK", "UNAUTHENTICATED"]
    assert records[0].client == "alice" and records[0].rows == 2 and records[1].client is None


def test_auth_optional_lets_anonymous_through_but_not_bad_keys(gateway):
    gw = gateway(GatewayPolicy(auth_required=False, budget=3))
    target = Target(f"127.0.0.1:{gw.port}")
    target.predict(images(3))
    code, details = _code(target.predict, images(1))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "'anonymous'" in details
    assert _code(Target(f"127.0.0.1:{gw.port}", "wrong").predict, images(1))[0] is \
        grpc.StatusCode.UNAUTHENTICATED


# -- budgets and rate limits -----------------------------------------------------------------------

def test_budget_refuses_whole_batch_and_names_the_limit(gateway):
    gw = gateway(GatewayPolicy(budget=10))
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)
    target.predict(images(6))
    code, details = _code(target.predict, images(6))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget" in details and "6 of 10" in details
    target.predict(images(4))  # exactly what is left
    assert _code(target.predict, images(1))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert gw.store.usage("alice") == 10


def test_per_client_budget_overrides_policy_and_splitting_does_not_help(gateway):
    gw = gateway(GatewayPolicy(budget=1000))
    key = add_client(gw.store, "bob", budget=5)
    target = Target(f"127.0.0.1:{gw.port}", key)
    answered = 0
    for _ in range(8):  # one row at a time, on fresh channels (reconnecting does not help)
        try:
            Target(f"127.0.0.1:{gw.port}", key).predict(images(1))
            answered += 1
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert answered == 5
    assert _code(target.predict, images(1))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_rate_limit(gateway):
    gw = gateway(GatewayPolicy(rate_per_second=0.5, burst=2))
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)
    target.predict(images(1))
    target.predict(images(1))
    code, details = _code(target.predict, images(1))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "rate_per_second" in details


def test_upstream_errors_pass_through_and_are_not_charged(gateway):
    gw = gateway()
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)
    code, details = _code(target.predict, images(2), model="nope")
    assert code is grpc.StatusCode.NOT_FOUND
    assert details == "Servable not found for request: Latest(nope)"
    assert gw.store.usage("alice") == 0


def test_models_filter_hides_other_models(gateway):
    gw = gateway(GatewayPolicy(models=("tiny",)))
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)
    code, details = _code(target.predict, images(1), model="examples")
    assert code is grpc.StatusCode.NOT_FOUND
    assert details == "Servable not found for request: Latest(examples)"
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    answer = target.predict_stub.GetModelMetadata(request, metadata=target.metadata, timeout=10)
    assert answer.model_spec.name == "tiny"


def test_classify_is_forwarded_and_charged_per_example(gateway, server):
    gw = gateway(GatewayPolicy(budget=3))
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "examples"
    request.model_spec.signature_name = "classify_x"
    for values in ([1.0, 2.0], [0.5, -1.0]):
        request.input.example_list.examples.add().features.feature["x"].float_list.value.extend(
            values)
    through = target.predict_stub.Classify(request, metadata=target.metadata, timeout=10)
    direct = Target(f"127.0.0.1:{server.port}").predict_stub.Classify(request, timeout=10)
    assert through == direct
    assert gw.store.usage("alice") == 2
    assert _code(target.predict_stub.Classify, request, metadata=target.metadata,
                 timeout=10)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_reload_config_is_not_forwarded(gateway):
    gw = gateway()
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)
    code, _ = _code(target.model_stub.HandleReloadConfigRequest,
                    model_management_pb2.ReloadConfigRequest(), metadata=target.metadata,
                    timeout=10)
    assert code is grpc.StatusCode.UNIMPLEMENTED


def test_malformed_request_bytes(gateway):
    gw = gateway()
    key = add_client(gw.store, "alice")
    code, _ = _code(Target(f"127.0.0.1:{gw.port}", key).predict_raw, b"\xff\xff\xff")
    assert code is grpc.StatusCode.INTERNAL
    assert gw.store.usage("alice") == 0


def test_concurrent_requests_never_overspend(gateway):
    gw = gateway(GatewayPolicy(budget=20, rate_per_second=1000, burst=1000))
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)

    def one(_):
        try:
            target.predict(images(3))
            return 3
        except grpc.RpcError as err:
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            return 0

    with ThreadPoolExecutor(8) as pool:
        answered = sum(pool.map(one, range(16)))
    assert answered == 18 == gw.store.usage("alice")
    ok = [r for r in gw.store.audit_records() if r.code == "OK"]
    assert sum(r.rows for r in ok) == 18 and len(gw.store.audit_records()) == 16


# -- state survives a restart ----------------------------------------------------------------------

def test_restart_keeps_budget_sqlite(gateway, tmp_path):
    state = f"sqlite:{tmp_path / 'kept.db'}"
    gw = gateway(GatewayPolicy(budget=10), state=state)
    key = add_client(gw.store, "alice")
    Target(f"127.0.0.1:{gw.port}", key).predict(images(7))
    gw.stop()
    gw.store.close()
    again = gateway(GatewayPolicy(budget=10), store=SQLiteStore(tmp_path / "kept.db"),
                    state=state)
    target = Target(f"127.0.0.1:{again.port}", key)
    code, details = _code(target.predict, images(4))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "7 of 10" in details
    target.predict(images(3))
    assert len(again.store.audit_records()) == 3


def test_restart_keeps_budget_redis(gateway):
    fakeredis = pytest.importorskip("fakeredis")
    shared = fakeredis.FakeServer()
    gw = gateway(GatewayPolicy(budget=10),
                 store=RedisStore(client=fakeredis.FakeRedis(server=shared)))
    key = add_client(gw.store, "alice")
    Target(f"127.0.0.1:{gw.port}", key).predict(images(7))
    gw.stop()
    again = gateway(GatewayPolicy(budget=10),
                    store=RedisStore(client=fakeredis.FakeRedis(server=shared)))
    target = Target(f"127.0.0.1:{again.port}", key)
    code, details = _code(target.predict, images(4))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "7 of 10" in details
    target.predict(images(3))
    assert [r.code for r in again.store.audit_records()] == ["OK", "RESOURCE_EXHAUSTED", "OK"]


# -- upstream down and back, health ----------------------------------------------------------------

def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_serving_with_upstream(gateway):
    gw = gateway()
    for service in ("", "tensorflow.serving.PredictionService"):
        assert _health(f"127.0.0.1:{gw.port}", service) == health_pb2.HealthCheckResponse.SERVING


def test_upstream_down_then_back_without_restart(gateway, server):
    port = testing.pick_unused_port()
    gw = gateway(upstream=f"127.0.0.1:{port}", health_interval=0.2)
    key = add_client(gw.store, "alice")
    target = Target(f"127.0.0.1:{gw.port}", key)
    assert _health(f"127.0.0.1:{gw.port}") == health_pb2.HealthCheckResponse.NOT_SERVING
    start = time.monotonic()
    code, details = _code(target.predict, images(1), timeout=3.0)
    assert code is grpc.StatusCode.UNAVAILABLE and time.monotonic() - start < 3.0
    assert str(port) not in details  # the upstream's address is not leaked
    assert gw.store.usage("alice") == 0
    with testing.model_server(base_path=server.base / "tiny", name="tiny", port=port):
        deadline = time.monotonic() + 15
        while True:
            try:
                target.predict(images(1), timeout=3.0)
                break
            except grpc.RpcError as err:
                assert err.code() is grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() < deadline, "the gateway did not recover"
                time.sleep(0.2)
        deadline = time.monotonic() + 5
        while _health(f"127.0.0.1:{gw.port}") != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert gw.store.usage("alice") == 1


# -- metrics ---------------------------------------------------------------------------------------

def test_metrics_scrape(gateway):
    gw = gateway(metrics_port=testing.pick_unused_port())
    key = add_client(gw.store, "alice")
    Target(f"127.0.0.1:{gw.port}", key).predict(images(2))
    _code(Target(f"127.0.0.1:{gw.port}").predict, images(1))
    text = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics",
                                  timeout=5).read().decode()
    for name in METRIC_NAMES:
        assert name in text, name
    assert 'mx_gateway_queries_total{client="alice"} 2.0' in text
    assert 'mx_gateway_requests_total{code="UNAUTHENTICATED",method="Predict"} 1.0' in text
    assert "mx_gateway_upstream_up 1.0" in text
    assert key not in text


# -- TLS -------------------------------------------------------------------------------------------

def _self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    return key, cert


def test_tls(gateway, tmp_path):
    key_file, cert_file = _self_signed(tmp_path)
    gw = gateway(tls_cert=str(cert_file), tls_key=str(key_file))
    key = add_client(gw.store, "alice")
    creds = grpc.ssl_channel_credentials(root_certificates=cert_file.read_bytes())
    answer = Target(f"127.0.0.1:{gw.port}", key, credentials=creds).predict(images(2))
    assert answer.outputs["probabilities"].tensor_shape.dim[0].size == 2
    # a plaintext client cannot talk to it
    assert _code(Target(f"127.0.0.1:{gw.port}", key).predict, images(1), timeout=3)[0] in (
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_answers_decode_like_direct(gateway, server):
    gw = gateway()
    key = add_client(gw.store, "alice")
    x = images(4, seed=3)
    answer = Target(f"127.0.0.1:{gw.port}", key).predict(x)
    probs = codec.to_ndarray(answer.outputs["probabilities"])
    expected = server.keras_models[2].predict(x.astype(np.float32), verbose=0)
    e = np.exp(expected - expected.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), atol=1e-5)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_tls_client_certificates_required(gateway, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-keyout",
             str(ca_key), "-out", str(ca), "-subj", "/CN=test-ca")
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost\n")
    pems = {}
    for who in ("server", "client"):
        key, csr, cert = (tmp_path / f"{who}.{s}" for s in ("key", "csr", "pem"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={'localhost' if who == 'server' else 'client'}")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-days", "1", "-out", str(cert), "-extfile", str(ext))
        pems[who] = (key, cert)
    gw = gateway(tls_cert=str(pems["server"][1]), tls_key=str(pems["server"][0]),
                 tls_client_ca=str(ca))
    key = add_client(gw.store, "alice")
    address = f"127.0.0.1:{gw.port}"
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(), private_key=pems["client"][0].read_bytes(),
        certificate_chain=pems["client"][1].read_bytes())
    Target(address, key, credentials=with_cert).predict(images(1))
    without = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    code, _ = _code(Target(address, key, credentials=without).predict, images(1), timeout=5)
    assert code is grpc.StatusCode.UNAVAILABLE
