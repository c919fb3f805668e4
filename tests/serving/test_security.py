"""Security tests of the gateway (`serving.gateway`) in front of the embedded server.

TLS (server certificate, and client certificates when `--tls-client-ca` is given), generated at
test time with the `cryptography` package; API keys never in the logs, the SQLite file (its WAL
included) or the audit table; no client reads another's state or escapes its budget by
reconnecting, by changing the case or whitespace of its key, or by splitting its batches; the
label-only policy never leaks a probability (a hypothesis property on
`detector.policies.LabelOnly`, and through the gateway on Predict, Classify and
MultiInference); the admin RPC HandleReloadConfigRequest is not reachable through the gateway.
The gateway runs in this process (`serving.testing.gateway`), the server too (conftest).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import sqlite3
from concurrent import futures

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from detector.policies import LabelOnly
from serving import testing
from serving.codec import to_ndarray
from serving.gateway.__main__ import main as gateway_main
from tests.serving.tiny_models import IMAGE_SHAPE
from tests.serving.tiny_models import predict_request as tiny_request

DT = types_pb2.DataType
TIMEOUT = 15.0
RNG = np.random.default_rng(11)
IMAGES = RNG.integers(0, 256, size=(4, *IMAGE_SHAPE), dtype=np.uint8)


def predict_request(n: int = 1, images=None) -> predict_pb2.PredictRequest:
    return tiny_request(IMAGES[:n] if images is None else images)


def add_key(state, client: str, budget: int | None = None) -> str:
    out = io.StringIO()
    argv = ["keys", "add", "--state", f"sqlite:{state}", "--client", client]
    if budget is not None:
        argv += ["--budget", str(budget)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert gateway_main(argv) == 0
    return out.getvalue().strip().splitlines()[-1].strip()


def start_gateway(server, tmp_path, policy: dict, **tls) -> testing.Running:
    """The gateway in this process in front of `server`, its state in `tmp_path`/state.db;
    `tls` are `GatewayConfig`'s TLS fields (a TLS port: not probed with plaintext health)."""
    return testing.gateway(f"127.0.0.1:{server.port}", policy=policy,
                           state=tmp_path / "state.db", wait=not tls, **tls)


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def logs():
    """Every log record of every logger, at DEBUG, while the module runs."""
    handler = LogCapture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory, logs):
    """A gateway with three clients: alice (budget 10), bob (budget 1000), carol (default)."""
    tmp = tmp_path_factory.mktemp("gw")
    keys = {"alice": add_key(tmp / "state.db", "alice", budget=10),
            "bob": add_key(tmp / "state.db", "bob", budget=1000),
            "carol": add_key(tmp / "state.db", "carol")}
    gateway = start_gateway(server, tmp, {"auth": {"required": True},
                                          "limits": {"budget": 500, "rate_per_second": 10**4,
                                                     "burst": 10**4}})
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
    yield {"gateway": gateway, "keys": keys, "state": tmp / "state.db", "channel": channel,
           "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel)}
    channel.close()
    gateway.stop()


def call(stub_method, request, key=None, metadata=None):
    md = list(metadata or []) + ([("x-api-key", key)] if key is not None else [])
    try:
        return stub_method(request, timeout=TIMEOUT, metadata=md), None
    except grpc.RpcError as err:
        assert err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED
        return None, err


def used(state, name: str) -> int:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT used FROM usage WHERE name = ?", (name,)).fetchone()
    finally:
        db.close()
    return 0 if row is None else int(row[0])


# -- keys: variants, budget, isolation ----
def variants(key: str) -> list[str]:
    return [key.upper(), key.lower(), key.swapcase(), " " + key, key + " ", key + "\t",
            key + "\n", "\u00a0" + key, key[:-1], key + "x", key[1:], key.replace("_", "-")]


def test_altered_keys_are_unknown_and_charge_nobody(gw):
    stub, key = gw["stub"], gw["keys"]["carol"]
    response, err = call(stub.Predict, predict_request(), key)
    assert err is None
    before = {n: used(gw["state"], n) for n in ("alice", "bob", "carol")}
    tried = 0
    for other in variants(key):
        if other == key:
            continue
        try:
            _, err = call(stub.Predict, predict_request(), other)
        except ValueError:  # a header value gRPC refuses to send
            continue
        if err is not None and err.details() == "Invalid metadata":  # refused by the client
            continue                                                  # library (tab, newline)
        tried += 1
        assert err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED, other
        assert other not in err.details()
    for header in (f"Bearer  {key}", f"bearer {key} ", f"Basic {key}", key, f"Bearer{key}"):
        _, err = call(stub.Predict, predict_request(), metadata=[("authorization", header)])
        if header.lower() == f"bearer {key}".lower() and header.endswith(key):
            continue
        assert err is not None and err.code() is grpc.StatusCode.UNAUTHENTICATED, header
    _, err = call(stub.Predict, predict_request(), metadata=[("authorization", f"BEARER {key}")])
    assert err is None, "the scheme word is case-insensitive (RFC 7235)"
    assert tried >= 8
    assert {n: used(gw["state"], n) for n in ("alice", "bob", "carol")} == {
        **before, "carol": before["carol"] + 1}


def test_budget_counts_images_not_requests_or_connections(gw, server):
    """alice (budget 10): batches 4 + 4 pass, a batch of 4 more is refused whole (12 > 10),
    batches of 1 then fill exactly to 10; a new channel, and a second key of bob's in the same
    call, change nothing; bob is untouched and never named in alice's errors."""
    key, state = gw["keys"]["alice"], gw["state"]
    stub = gw["stub"]
    for _ in range(2):
        _, err = call(stub.Predict, predict_request(4), key)
        assert err is None
    _, err = call(stub.Predict, predict_request(4), key)
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "budget" in err.details().lower()
    assert used(state, "alice") == 8
    for _ in range(2):
        _, err = call(stub.Predict, predict_request(1), key)
        assert err is None
    assert used(state, "alice") == 10
    bob_before = used(state, "bob")
    for attempt in range(3):  # reconnect: a fresh channel each time, same key
        with grpc.insecure_channel(f"127.0.0.1:{gw['gateway'].port}") as ch:
            fresh = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            _, err = call(fresh.Predict, predict_request(1), key)
            assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "bob" not in err.details() and gw["keys"]["bob"] not in err.details()
    # alice's key first, bob's second: x-api-key wins, the first one counts
    _, err = call(stub.Predict, predict_request(1), key,
                  metadata=[("authorization", f"Bearer {gw['keys']['bob']}")])
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert used(state, "alice") == 10 and used(state, "bob") == bob_before
    # the upstream itself (no gateway) is not this test's business: it has no keys
    _, err = call(stub.Predict, predict_request(1), gw["keys"]["bob"])
    assert err is None and used(state, "bob") == bob_before + 1


def test_concurrent_split_batches_cannot_overdraw(server, tmp_path):
    """A client with budget 20 fires 40 single-image requests from 8 threads at once: exactly
    20 are answered, the rest RESOURCE_EXHAUSTED, and 20 are charged."""
    key = add_key(tmp_path / "state.db", "dave", budget=20)
    gateway = start_gateway(server, tmp_path, {"auth": {"required": True},
                                               "limits": {"rate_per_second": 10**4,
                                                          "burst": 10**4}})
    try:
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as ch:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
            with futures.ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda _: call(stub.Predict, predict_request(1), key),
                                        range(40)))
        ok = sum(err is None for _, err in results)
        refused = [err.code() for _, err in results if err is not None]
        assert ok == 20 and set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert used(tmp_path / "state.db", "dave") == 20
    finally:
        gateway.stop()


def test_no_rpc_reads_another_clients_state(gw):
    """What a client can ask the gateway (metadata, status, predict) carries no other client's
    name, usage or key; unknown and missing keys say only that."""
    stub = gw["stub"]
    names = ("alice", "bob", "carol")
    texts = []
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    md = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    md.model_spec.name = "tiny"
    response, err = call(stub.GetModelMetadata, md, gw["keys"]["carol"])
    texts.append(str(response) if err is None else err.details())
    status_stub = model_service_pb2_grpc.ModelServiceStub(gw["channel"])
    sreq = get_model_status_pb2.GetModelStatusRequest()
    sreq.model_spec.name = "tiny"
    response, err = call(status_stub.GetModelStatus, sreq, gw["keys"]["carol"])
    texts.append(str(response) if err is None else err.details())
    for key in (None, "", "mxk_" + "A" * 43):
        _, err = call(stub.Predict, predict_request(), key)
        assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        texts.append(err.details())
    blob = "\n".join(texts)
    for name in ("alice", "bob"):
        assert name not in blob
    for key in gw["keys"].values():
        assert key not in blob
    assert all(n not in blob for n in names[:2])


def test_keys_never_in_logs_database_or_audit(gw, logs):
    """After this test's own requests (and any sent before it): no key (nor its secret part)
    in any log line at DEBUG, in the SQLite file and its WAL, in the audit table, nor in
    `keys list`'s output."""

    stub = gw["stub"]
    for key in gw["keys"].values():  # one more of each kind, to be sure something was logged
        call(stub.Predict, predict_request(), key)
        call(stub.Predict, predict_request(), key.upper())
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        gateway_main(["keys", "list", "--state", f"sqlite:{gw['state']}"])
    state = gw["state"]
    raw = b"".join(p.read_bytes() for p in state.parent.glob(state.name + "*"))
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        dump = "\n".join(str(row) for t in tables for row in db.execute(f"SELECT * FROM {t}"))
        audit_rows = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    finally:
        db.close()
    assert audit_rows >= 20 and len(logs.lines) > 0
    haystacks = {"logs": "\n".join(logs.lines), "keys list": out.getvalue(), "tables": dump}
    for key in gw["keys"].values():
        secret = key.split("_", 1)[-1]
        for variant in {key, secret, key.upper(), secret.upper()}:
            assert variant.encode() not in raw, "key found in the SQLite file"
            for where, text in haystacks.items():
                assert variant not in text, f"key found in {where}"


# -- the admin RPC ----
def test_handle_reload_config_is_not_exposed(gw, server):
    """UNIMPLEMENTED through the gateway (with a valid key too), and the upstream's config is
    unchanged (an empty config would have unloaded every model)."""

    admin = model_service_pb2_grpc.ModelServiceStub(gw["channel"])
    empty = model_server_config_pb2.ModelServerConfig()
    empty.model_config_list.SetInParent()
    for key in (None, gw["keys"]["bob"]):
        _, err = call(admin.HandleReloadConfigRequest,
                      model_management_pb2.ReloadConfigRequest(config=empty), key)
        assert err is not None and err.code() is grpc.StatusCode.UNIMPLEMENTED
    raw = gw["channel"].unary_unary(
        "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
        request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        raw(b"", timeout=TIMEOUT, metadata=[("x-api-key", gw["keys"]["bob"])])
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "tiny" in server.manager.model_names()
    _, err = call(gw["stub"].Predict, predict_request(), gw["keys"]["bob"])
    assert err is None


# -- label only ----
PROBS = hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(2, 12)),
                   elements=st.floats(0, 1, width=32))


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(PROBS, st.integers(0, 2**32 - 1))
def test_label_only_never_leaks_a_probability(probs, seed):
    """Output rows are exact one-hots of the argmax, and any two inputs with the same argmax
    give byte-identical outputs: nothing but the top-1 class can be read from them."""

    probs = probs + 1e-6
    probs = probs / probs.sum(axis=1, keepdims=True)
    policy = LabelOnly()
    out = policy(probs)
    assert out.shape == probs.shape and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0}
    assert (out.sum(axis=1) == 1).all()
    np.testing.assert_array_equal(out.argmax(axis=1), probs.argmax(axis=1))
    other = np.random.default_rng(seed).random(probs.shape).astype(np.float32)
    other[np.arange(len(other)), probs.argmax(axis=1)] = 2.0  # same argmax, other values
    other = other / other.sum(axis=1, keepdims=True)
    assert policy(other).tobytes() == out.tobytes()


@pytest.fixture(scope="module")
def label_only_gw(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label_only")
    key = add_key(tmp / "state.db", "eve")
    gateway = start_gateway(server, tmp, {"auth": {"required": True}, "always": "label_only",
                                          "limits": {"rate_per_second": 10**4, "burst": 10**4}})
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), key
    channel.close()
    gateway.stop()


def _floats(proto) -> np.ndarray:

    return np.asarray(to_ndarray(proto), dtype=np.float64)


def test_label_only_through_the_gateway_predict(label_only_gw):
    """Every float output of every answer is a function of the top-1 class alone: in each row
    one entry (at the argmax of the probabilities) holds a value `hi` and all others a value
    `lo`, with (hi, lo) the same for every row of every answer of that output (probabilities:
    1 and 0; logits: the log of the clipped one-hot). Asking for one output changes nothing."""
    stub, key = label_only_gw
    patterns: dict[str, set] = {}

    @settings(max_examples=25, deadline=None, derandomize=True, database=None)
    @given(hnp.arrays(np.uint8, st.tuples(st.integers(1, 4), *map(st.just, IMAGE_SHAPE))),
           st.sampled_from([[], ["probabilities"], ["logits"], ["logits", "probabilities"]]))
    def check(images, output_filter):
        request = predict_request(images=images)
        request.output_filter.extend(output_filter)
        response, err = call(stub.Predict, request, key)
        assert err is None, err
        assert response.outputs
        tops = {}
        for alias, proto in response.outputs.items():
            rows = _floats(proto).reshape(len(images), -1)
            top = rows.argmax(axis=1)
            tops[alias] = top
            for row, t in zip(rows, top):
                others = np.delete(row, t)
                assert len(set(others.tolist())) == 1 and others[0] < row[t], (alias, row)
                patterns.setdefault(alias, set()).add((float(row[t]), float(others[0])))
        if len(tops) == 2:
            np.testing.assert_array_equal(*tops.values())

    check()
    assert patterns.get("probabilities") == {(1.0, 0.0)}, patterns
    assert all(len(p) == 1 for p in patterns.values()), patterns


def test_label_only_through_the_gateway_classify_and_multi_inference(label_only_gw):
    """Classify and MultiInference answers carry class scores too: only 0/1 may come back."""
    stub, key = label_only_gw

    def examples(target):
        for x in ([0.3, -1.2], [2.0, 0.5], [-0.1, 0.05]):
            ex = example_pb2.Example()
            ex.features.feature["x"].float_list.value.extend(x)
            target.examples.append(ex)

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "examples"
    request.model_spec.signature_name = "classify_x"
    examples(request.input.example_list)
    response, err = call(stub.Classify, request, key)
    if err is None:
        scores = [c.score for row in response.result.classifications for c in row.classes]
        assert set(scores) <= {0.0, 1.0}, scores
    else:
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED,
                              grpc.StatusCode.FAILED_PRECONDITION), err
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add(method_name="tensorflow/serving/classify")
    task.model_spec.name = "examples"
    task.model_spec.signature_name = "classify_x"
    examples(multi.input.example_list)
    response, err = call(stub.MultiInference, multi, key)
    if err is None:
        scores = [c.score for r in response.results
                  for row in r.classification_result.classifications for c in row.classes]
        assert set(scores) <= {0.0, 1.0}, scores
    else:
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED,
                              grpc.StatusCode.FAILED_PRECONDITION), err


# -- TLS ----
def _pki(tmp_path, name: str):
    """A CA and a leaf certificate it signs, PEM files: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {}
    for label, data in (("ca", ca.public_bytes(serialization.Encoding.PEM)),
                        ("cert", leaf.public_bytes(serialization.Encoding.PEM)),
                        ("key", pem_key(leaf_key))):
        paths[label] = tmp_path / f"{name}_{label}.pem"
        paths[label].write_bytes(data)
    return paths


def _tls_call(port: int, key: str, ca=None, client=None, insecure: bool = False):
    if insecure:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes() if ca else None,
            private_key=client["key"].read_bytes() if client else None,
            certificate_chain=client["cert"].read_bytes() if client else None)
        ch = grpc.secure_channel(f"localhost:{port}", creds)
    with ch:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        try:
            stub.Predict(predict_request(), timeout=5, metadata=[("x-api-key", key)])
            return "OK"
        except grpc.RpcError as err:
            return err.code().name


def test_tls_and_client_certificates(server, tmp_path):
    """Server TLS: a client trusting the CA gets OK; plaintext or another CA fails (UNAVAILABLE).
    With --tls-client-ca: no client certificate, or one from another CA, fails; one signed by
    the client CA gets OK. The API key is still required over TLS."""
    pytest.importorskip("cryptography")
    server_pki, client_pki, rogue = (_pki(tmp_path, n) for n in ("server", "client", "rogue"))
    key = add_key(tmp_path / "state.db", "tls")
    policy = {"auth": {"required": True}}
    gateway = start_gateway(server, tmp_path, policy, tls_cert=str(server_pki["cert"]),
                            tls_key=str(server_pki["key"]))
    try:
        port = gateway.port
        assert _tls_call(port, key, ca=server_pki["ca"]) == "OK"
        assert _tls_call(port, "wrong", ca=server_pki["ca"]) == "UNAUTHENTICATED"
        assert _tls_call(port, key, insecure=True) == "UNAVAILABLE"
        assert _tls_call(port, key, ca=rogue["ca"]) == "UNAVAILABLE"
    finally:
        gateway.stop()
    mtls_dir = tmp_path / "mtls"
    mtls_dir.mkdir()
    key = add_key(mtls_dir / "state.db", "mtls")
    gateway = start_gateway(server, mtls_dir, policy, tls_cert=str(server_pki["cert"]),
                            tls_key=str(server_pki["key"]), tls_client_ca=str(client_pki["ca"]))
    try:
        port = gateway.port
        assert _tls_call(port, key, ca=server_pki["ca"]) == "UNAVAILABLE"
        assert _tls_call(port, key, ca=server_pki["ca"], client=rogue) == "UNAVAILABLE"
        assert _tls_call(port, key, ca=server_pki["ca"], client=client_pki) == "OK"
        assert _tls_call(port, key, insecure=True) == "UNAVAILABLE"
    finally:
        gateway.stop()
