"""Fuzz tests of the gateway (`serving.gateway`) in front of the embedded server.

The same generators as `test_fuzz.py` (random and broken PredictRequests: every DataType, extreme
and huge declared shapes, NaN/Inf, wrong model specs, random output filters, TensorProtos from
random bytes), plus whole requests as random or mutated wire bytes, random or broken API-key
metadata, and the other RPCs, sent through a gateway with auth, budgets and PRADA on. Each must
end, within its deadline, in OK or a TF-Serving-style code (the upstream's codes for bad input,
UNAUTHENTICATED for a bad key, INTERNAL for bytes that do not parse), every request that
carried a valid key must leave exactly one audit record, the gateway must still answer a
valid request exactly as the upstream does, and its memory must stay bounded.
"""

from __future__ import annotations

import contextlib
import gc
import io
import sqlite3

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow_serving.apis import (
    get_model_status_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import testing
from serving.gateway.__main__ import main as gateway_main
from tests.serving.fuzzing import (
    BAD_INPUT_CODES,
    EDITS,
    FUZZ_SETTINGS,
    PREDICT_PATH,
    SWEEP_SIZE,
    fetch_signatures,
    mutate,
    predict_requests,
    rss_bytes,
    sweep_requests,
    valid_predict_request,
)

TIMEOUT = 15.0
GATEWAY_CODES = BAD_INPUT_CODES | {grpc.StatusCode.UNAUTHENTICATED,
                                   grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   grpc.StatusCode.PERMISSION_DENIED}


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gwfuzz")
    state = tmp / "state.db"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert gateway_main(["keys", "add", "--state", f"sqlite:{state}",
                             "--client", "fuzzer"]) == 0
    key = out.getvalue().strip().splitlines()[-1]
    policy = {"auth": {"required": True},
              "limits": {"budget": 10**9, "rate_per_second": 10**6, "burst": 10**6},
              "detectors": {"prada": {"delta": 0.95, "min_samples": 20, "max_set": 200}},
              "on_flag": {"action": "degrade", "policy": "label_only"}}
    with testing.gateway(f"127.0.0.1:{server.port}", policy=policy, state=state) as running:
        channel = grpc.insecure_channel(running.target)
        yield {"key": key, "state": state, "channel": channel,
               "stub": prediction_service_pb2_grpc.PredictionServiceStub(channel),
               "gateway": running.obj}
        channel.close()


@pytest.fixture(scope="module")
def gw_baseline(gw, stub):
    """The upstream's answer to a valid request, and the RSS before fuzzing."""
    request = valid_predict_request()
    direct = stub.Predict(request, timeout=TIMEOUT)
    through = gw["stub"].Predict(request, timeout=TIMEOUT, metadata=[("x-api-key", gw["key"])])
    assert through.outputs["probabilities"] == direct.outputs["probabilities"]
    gc.collect()
    return {"response": direct, "rss": rss_bytes()}


def outcome(fn, request, **kwargs):
    try:
        return fn(request, timeout=TIMEOUT, **kwargs), None
    except grpc.RpcError as err:
        assert err.code() is not grpc.StatusCode.DEADLINE_EXCEEDED, "hang"
        return None, err


def audit_count(state) -> int:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM audit WHERE client = 'fuzzer'").fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def audited(gw):
    """Audit records of the fuzzer's key before this test (each test checks its own delta)."""
    return audit_count(gw["state"])


def assert_gateway_sound(gw, gw_baseline, audited_before: int, with_key: int) -> None:
    """After a fuzz test: one audit record per request this test sent with the valid key, the
    gateway still answers a valid request as the upstream does (or label-only, once PRADA has
    flagged the fuzzer), and its process has not grown by 300 MiB since before any fuzzing."""
    records = audit_count(gw["state"]) - audited_before
    assert records == with_key, f"{records} audit records for {with_key} requests with the key"
    response = gw["stub"].Predict(valid_predict_request(), timeout=TIMEOUT,
                                  metadata=[("x-api-key", gw["key"])])
    assert response.outputs["probabilities"] == gw_baseline["response"].outputs[
        "probabilities"] or all(v in (0.0, 1.0) for v in
                                response.outputs["probabilities"].float_val)  # PRADA degraded
    gc.collect()
    grown = rss_bytes() - gw_baseline["rss"]
    assert grown < 300 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB"


def test_predict_sweep_through_the_gateway(gw, gw_baseline, audited, fuzz_tally):
    """The server's deterministic sweep (every DataType enum and invalid numbers x ranks 0..6,
    zero, huge and negative dims x no data, exact `tensor_content` or the typed field) with the
    valid key: OK exactly for uint8 [b, 8, 8, 3], else INVALID_ARGUMENT (the gateway decodes
    the inputs before forwarding), or RESOURCE_EXHAUSTED naming the budget for a declared
    batch above it; one audit record each."""
    md = [("x-api-key", gw["key"])]
    for request, valid, where in sweep_requests():
        _, err = outcome(gw["stub"].Predict, request, metadata=md)
        code = err.code() if err else grpc.StatusCode.OK
        fuzz_tally.add("Predict (sweep)", code.name)
        if valid:
            assert err is None, f"{where}: {code.name} {err.details()!r}"
            continue
        assert err is not None, f"{where}: answered OK"
        assert err.details(), where
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            dims = [d.size for d in request.inputs["images"].tensor_shape.dim]
            assert "budget" in err.details() and dims[0] > 10**9, where
        else:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, (
                f"{where}: {code.name} {err.details()!r}")
    assert fuzz_tally.requests == SWEEP_SIZE
    assert_gateway_sound(gw, gw_baseline, audited, SWEEP_SIZE)


def test_predict_fuzz_through_the_gateway(gw, gw_baseline, stub, audited, fuzz_tally):
    """Random PredictRequests with the valid key: the gateway answers with the upstream's own
    code (compared with the same request sent straight to the server), or OK for what the
    server answers OK."""
    signatures = fetch_signatures(stub)
    latest = {"tiny": signatures["tiny", 2], "examples": signatures["examples", 1]}
    md = [("x-api-key", gw["key"])]

    @settings(max_examples=300, **FUZZ_SETTINGS)
    @given(predict_requests(latest))
    def fuzz(request):
        direct, direct_err = outcome(stub.Predict, request)
        through, err = outcome(gw["stub"].Predict, request, metadata=md)
        fuzz_tally.add("Predict", err.code().name if err else "OK")
        if direct_err is None:
            assert err is None, (err.code(), err.details(), str(request)[:300])
            assert sorted(through.outputs) == sorted(direct.outputs)
        else:
            assert err is not None, f"gateway OK where the server said {direct_err.code()}"
            assert err.details()
            if (err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    and "budget" in err.details()):  # the declared batch alone is over budget:
                fuzz_tally.notes["refused early: declared batch over budget"] += 1  # refused
                return                                   # before forwarding, nothing charged
            if err.code() != direct_err.code():  # the gateway decodes the inputs before the
                assert err.code() in BAD_INPUT_CODES  # upstream resolves the model: a request
                assert direct_err.code() in BAD_INPUT_CODES  # wrong twice may get the other
                fuzz_tally.notes[f"code differs: gateway {err.code().name}, server "
                                 f"{direct_err.code().name}"] += 1

    fuzz()
    assert fuzz_tally.count("Predict") >= 300 and fuzz_tally.count("Predict", "OK") >= 10
    assert_gateway_sound(gw, gw_baseline, audited, fuzz_tally.requests)


def test_raw_bytes_and_bad_keys_through_the_gateway(gw, gw_baseline, audited, fuzz_tally):
    """Random or mutated request bytes with a valid, broken or missing key: UNAUTHENTICATED
    for every bad key whatever the body, INTERNAL/INVALID_ARGUMENT-like codes for unparseable
    bodies with the good key; never a hang or another code."""
    raw = gw["channel"].unary_unary(PREDICT_PATH, request_serializer=None,
                                    response_deserializer=None)
    seed = valid_predict_request().SerializeToString()
    key = gw["key"]
    keys = st.sampled_from([key, key, key, "", key.upper(), key + " ", "x" * 600, "mxk_nope"])

    @settings(max_examples=200, **FUZZ_SETTINGS)
    @given(st.integers(0, 2), st.binary(max_size=200), EDITS, keys,
           st.sampled_from(["x-api-key", "authorization", "X-Api-Key", "x-api-key-bin"]))
    def fuzz(kind, noise, edits, k, header):
        data = noise if kind == 0 else mutate(seed, edits)
        value = k if header != "authorization" else f"Bearer {k}"
        if header.endswith("-bin"):
            value = k.encode()
        try:
            _, err = outcome(raw, data, metadata=[(header.lower(), value)])
        except ValueError:
            return
        good = k == key and header.lower() in ("x-api-key", "authorization")
        code = err.code() if err else grpc.StatusCode.OK
        fuzz_tally.add("raw bytes", code.name)
        if not good:
            assert code is grpc.StatusCode.UNAUTHENTICATED, (code, header, k[:20])
            return
        try:
            predict_pb2.PredictRequest.FromString(data)
            parses = True
        except DecodeError:
            parses = False
        fuzz_tally.notes["with the valid key"] += 1
        if not parses:
            assert code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT), code
        else:
            assert code in GATEWAY_CODES | {grpc.StatusCode.OK}, code
        if err is not None:
            assert err.details()

    fuzz()
    assert fuzz_tally.requests >= 200
    assert_gateway_sound(gw, gw_baseline, audited, fuzz_tally.notes["with the valid key"])


def test_other_rpcs_through_the_gateway(gw, gw_baseline, audited, fuzz_tally):
    from serving.gateway import server as gateway_server  # noqa: F401 - the module exists

    status_stub = __import__("tensorflow_serving.apis.model_service_pb2_grpc",
                             fromlist=["x"]).ModelServiceStub(gw["channel"])

    @settings(max_examples=80, **FUZZ_SETTINGS)
    @given(st.sampled_from(["tiny", "examples", "", "nope"]) | st.text(max_size=8),
           st.none() | st.integers(-(2**63), 2**63 - 1))
    def fuzz(name, version):
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        response, err = outcome(status_stub.GetModelStatus, request,
                                metadata=[("x-api-key", gw["key"])])
        code = err.code() if err else grpc.StatusCode.OK
        fuzz_tally.add("GetModelStatus", code.name)
        assert code in GATEWAY_CODES | {grpc.StatusCode.OK}, code

    fuzz()
    assert fuzz_tally.requests >= 80
    assert_gateway_sound(gw, gw_baseline, audited, fuzz_tally.requests)
