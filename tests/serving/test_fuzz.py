"""Fuzz tests of the embedded model server: malformed requests through the real gRPC stub and HTTP.

Thousands of random or broken PredictRequests (every DataType enum and invalid enum numbers,
ranks 0..6, zero, negative and huge declared dimensions, truncated or oversized
`tensor_content`, values in the wrong typed field, NaN/Inf, unknown, extra and missing inputs,
random `output_filter`, model names, versions, labels and signatures, TensorProtos parsed from
random bytes, whole requests as mutated wire bytes), plus random GetModelMetadata, Classify,
Regress and REST `:predict` requests, generated with `hypothesis` (derandomized) and a
deterministic sweep. Every answer must be OK with outputs of the signature's dtype and shape, or
one of TF Serving's codes for bad input (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION) with
a non-empty message, within 10 s. TensorFlow 2.21 aborts the whole process on a Conv2D input of
the wrong rank, so this module finishing at all proves the server refuses such tensors before
the graph. Each test ends by checking that the server still answers a valid request as it did
before any fuzzing, without having grown by more than 300 MB, so no test relies on another's
order. Each test counts its own requests (`fuzz_tally`); `pytest -n 0 -s` prints the outcome
counts per status code.
"""

from __future__ import annotations

import gc
import http.client
import json

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    regression_pb2,
)

from tests.serving.fuzzing import (
    CALL_TIMEOUT,
    DT,
    EDITS,
    FUZZ_SETTINGS,
    IMAGES,
    INIT_OP_KEY,
    LABELS,
    NAMES,
    PREDICT_PATH,
    SWEEP_SIZE,
    _short,
    assert_unharmed,
    call,
    check_refusal,
    example,
    fetch_signatures,
    make_ndarray,
    model_specs,
    mutate,
    predict_requests,
    rss_bytes,
    softmax_scores,
    sweep_requests,
    valid_predict_request,
)
from tests.serving.tiny_models import CLASS_NAMES, IMAGE_SHAPE


# -- the Predict oracle ----------------------------------------------------------------------------
def check_predict(request: predict_pb2.PredictRequest, response, err, table) -> None:
    """OK only for a request the signature accepts, with outputs of its dtypes and shapes;
    otherwise one of TF Serving's codes for bad input."""
    if err is not None:
        check_refusal(err, request)
        return
    spec = request.model_spec
    served = response.model_spec
    key = spec.signature_name or "serving_default"
    assert served.name == spec.name and served.signature_name == key, _short(request)
    version = served.version.value
    if spec.HasField("version"):
        assert version == spec.version.value
    if spec.WhichOneof("version_choice") == "version_label":
        assert spec.name == "tiny" and LABELS.get(spec.version_label) == version, _short(request)
    assert (spec.name, version) in table, f"OK from an unknown model: {_short(request)}"
    assert key in table[spec.name, version], f"OK from an unknown signature: {_short(request)}"
    inputs, outputs = table[spec.name, version][key]
    assert set(request.inputs) == set(inputs), f"OK with wrong input names: {_short(request)}"
    batch = None
    for alias, proto in request.inputs.items():
        dtype, dims = inputs[alias]
        sizes = [d.size for d in proto.tensor_shape.dim]
        assert proto.dtype == dtype, f"OK for a {DT.Name(proto.dtype)} input: {_short(request)}"
        assert len(sizes) == len(dims) and all(w in (-1, s) for w, s in zip(dims, sizes)), (
            f"OK for input shape {sizes} against {dims}: {_short(request)}")
        batch = sizes[0]
    wanted = list(request.output_filter) or list(outputs)
    assert sorted(response.outputs) == sorted(wanted)
    for alias, proto in response.outputs.items():
        dtype, dims = outputs[alias]
        assert proto.dtype == dtype
        array = make_ndarray(proto)
        assert array.shape == tuple(batch if d == -1 else d for d in dims), (alias, array.shape)
        if alias in ("probabilities", "scores") and array.size and np.isfinite(array).all():
            np.testing.assert_allclose(array.sum(axis=1), 1.0, atol=1e-4)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def signatures(stub):
    return fetch_signatures(stub)


@pytest.fixture(scope="module")
def latest_signatures(signatures):
    return {"tiny": signatures["tiny", 2], "examples": signatures["examples", 1]}


@pytest.fixture(scope="module")
def baseline(server, stub):
    """The first valid answer (tiny, version 1) and the RSS after it, before any fuzzing."""
    request = valid_predict_request()
    response = stub.Predict(request, timeout=CALL_TIMEOUT)
    gc.collect()
    return {"request": request, "probabilities": make_ndarray(response.outputs["probabilities"]),
            "rss": rss_bytes()}


# -- Predict: a deterministic sweep of every DataType enum over a set of shapes --------------------
def test_predict_sweep_every_dtype_and_rank(baseline, stub, fuzz_tally):
    """Every DataType enum (and invalid numbers) x ranks 0..6, zero/huge/negative dims x no data,
    exact `tensor_content` or the typed field: OK exactly for uint8 [b, 8, 8, 3] with valid data,
    INVALID_ARGUMENT for all else (never reaching the Conv2D that would abort the process)."""
    for request, valid, where in sweep_requests():
        response, err = call(fuzz_tally, "Predict", stub.Predict, request)
        proto = request.inputs["images"]
        dims = [d.size for d in proto.tensor_shape.dim]
        if valid:
            assert err is None, f"{where}: {err.code().name} {err.details()!r}"
            probs = make_ndarray(response.outputs["probabilities"])
            assert probs.shape == (dims[0], len(CLASS_NAMES)) and probs.dtype == np.float32
            continue
        assert err is not None, f"{where}: answered OK"
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (
            f"{where}: {err.code().name} {err.details()!r}")
        assert err.details()
        if proto.dtype == DT.DT_UINT8 and len(dims) != 4 and all(d >= 0 for d in dims):
            fuzz_tally.notes["uint8 of wrong rank to the Conv2D model"] += 1
            assert "images" in err.details()
    assert fuzz_tally.requests == SWEEP_SIZE
    assert_unharmed(stub, baseline)


# -- Predict: hypothesis over whole requests -------------------------------------------------------
def test_predict_fuzz(baseline, stub, signatures, latest_signatures, fuzz_tally):
    notes = fuzz_tally.notes
    dtypes = set()

    @settings(max_examples=900, **FUZZ_SETTINGS)
    @given(predict_requests(latest_signatures, notes))
    def fuzz(request):
        for alias, proto in request.inputs.items():
            dtypes.add(proto.dtype)
            if (request.model_spec.name == "tiny" and proto.dtype == DT.DT_UINT8
                    and len(proto.tensor_shape.dim) != 4):
                notes["uint8 of wrong rank to the Conv2D model"] += 1
        response, err = call(fuzz_tally, "Predict", stub.Predict, request)
        check_predict(request, response, err, signatures)

    fuzz()
    notes["distinct dtype enums sent"] = len(dtypes)
    assert fuzz_tally.count("Predict") >= 900
    assert notes["uint8 of wrong rank to the Conv2D model"] >= 30
    assert fuzz_tally.count("Predict", "OK") >= 20  # the generator also exercises the graph
    assert_unharmed(stub, baseline)


# -- Predict: whole requests as random or mutated wire bytes ---------------------------------------
def test_predict_raw_bytes_fuzz(baseline, stub, channel, signatures, fuzz_tally):
    """Bytes that do not parse as a PredictRequest get gRPC's own INTERNAL "Exception
    deserializing request!" (C++ gRPC, hence TF Serving, answers INTERNAL there too: it is the
    transport, not the server); bytes that parse are judged like any PredictRequest."""
    raw = channel.unary_unary(PREDICT_PATH, request_serializer=None,
                              response_deserializer=predict_pb2.PredictResponse.FromString)
    valid = baseline["request"]
    int_val = predict_pb2.PredictRequest()
    int_val.CopyFrom(valid)
    int_val.inputs["images"].ClearField("tensor_content")
    int_val.inputs["images"].int_val.extend(IMAGES.ravel().tolist())
    int_val.output_filter.append("logits")
    seeds = [valid.SerializeToString(), int_val.SerializeToString()]

    @settings(max_examples=250, **FUZZ_SETTINGS)
    @given(st.integers(0, 3), st.binary(max_size=256), st.sampled_from(seeds), EDITS)
    def fuzz(kind, noise, seed, edits):
        data = noise if kind == 0 else mutate(seed, edits)
        try:
            request = predict_pb2.PredictRequest.FromString(data)
        except DecodeError:
            request = None
        response, err = call(fuzz_tally, "Predict (raw bytes)", raw, data)
        if request is None:
            assert err is not None and err.code() is grpc.StatusCode.INTERNAL, (
                f"unparseable bytes {data[:80]!r}: {err and err.code()}")
            assert err.details() == "Exception deserializing request!"
            return
        check_predict(request, response, err, signatures)

    fuzz()
    assert fuzz_tally.requests >= 250
    assert_unharmed(stub, baseline)


# -- GetModelMetadata ------------------------------------------------------------------------------
def test_get_model_metadata_fuzz(baseline, stub, fuzz_tally):
    @settings(max_examples=150, **FUZZ_SETTINGS)
    @given(st.data())
    def fuzz(data):
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        if data.draw(st.integers(0, 9)) > 0:
            data.draw(model_specs(request.model_spec))
            request.model_spec.signature_name = data.draw(
                st.sampled_from(["", "serving_default"]) | NAMES)
        if data.draw(st.integers(0, 9)) < 5:
            request.metadata_field.append("signature_def")
        else:
            request.metadata_field.extend(data.draw(st.lists(
                st.sampled_from(["signature_def", "", "SIGNATURE_DEF", "signature_defs"])
                | NAMES, max_size=3)))
        response, err = call(fuzz_tally, "GetModelMetadata", stub.GetModelMetadata, request)
        if err is not None:
            check_refusal(err, request, {grpc.StatusCode.INVALID_ARGUMENT,
                                         grpc.StatusCode.NOT_FOUND})
            return
        spec = request.model_spec
        assert spec.name in ("tiny", "examples"), _short(request)
        assert request.metadata_field and set(request.metadata_field) == {"signature_def"}
        assert response.model_spec.name == spec.name
        if spec.HasField("version"):
            assert response.model_spec.version.value == spec.version.value
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(sig_map)
        assert "serving_default" in sig_map.signature_def

    fuzz()
    assert fuzz_tally.requests >= 150
    assert_unharmed(stub, baseline)


# -- Classify / Regress ----------------------------------------------------------------------------
FEATURE_FLOATS = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def features(draw):
    feature = feature_pb2.Feature()
    kind = draw(st.sampled_from(["float", "float", "float", "int", "bytes", "empty"]))
    if kind == "float":
        feature.float_list.value.extend(draw(st.lists(FEATURE_FLOATS, max_size=4)))
    elif kind == "int":
        feature.int64_list.value.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1),
                                                      max_size=3)))
    elif kind == "bytes":
        feature.bytes_list.value.extend(draw(st.lists(st.binary(max_size=8), max_size=3)))
    return feature


@st.composite
def examples(draw):
    r = draw(st.integers(0, 9))
    if r < 6:  # a valid `x`, sometimes NaN/Inf, sometimes beside other features
        ex = example(draw(st.lists(FEATURE_FLOATS, min_size=2, max_size=2)))
        if r == 5:
            ex.features.feature[draw(NAMES)].CopyFrom(draw(features()))
        return ex
    if r == 6:
        try:
            return example_pb2.Example.FromString(draw(st.binary(max_size=48)))
        except DecodeError:
            return example_pb2.Example()
    ex = example_pb2.Example()
    for key in draw(st.lists(st.sampled_from(["x", "x", "y"]) | NAMES, max_size=3, unique=True)):
        ex.features.feature[key].CopyFrom(draw(features()))
    return ex


def effective_x(ex: example_pb2.Example, context: example_pb2.Example | None):
    """`x` as the graph reads it (the example's entry replaces the context's), or None."""
    feats = ex.features.feature
    source = feats if "x" in feats or context is None else context.features.feature
    if "x" not in source or source["x"].WhichOneof("kind") != "float_list":
        return None
    values = list(source["x"].float_list.value)
    return values if len(values) == 2 else None


def test_classify_and_regress_fuzz(baseline, stub, fuzz_tally):
    """Random tf.Examples (missing, mistyped, wrong-length or NaN/Inf `x`, random features,
    contexts, random bytes) to Classify and Regress: OK exactly when every example has two
    floats `x`, then the scores/values of the known formula."""

    @settings(max_examples=300, **FUZZ_SETTINGS)
    @given(st.data())
    def fuzz(data):
        regress = data.draw(st.booleans())
        request = (regression_pb2.RegressionRequest() if regress
                   else classification_pb2.ClassificationRequest())
        data.draw(model_specs(request.model_spec, names=("examples", "tiny")))
        fitting = ["regress_x"] if regress else ["classify_x", "scores_only"]
        others = ["", "classify_x", "scores_only", "regress_x", "serving_default", INIT_OP_KEY]
        request.model_spec.signature_name = data.draw(
            st.sampled_from(fitting) if data.draw(st.integers(0, 9)) < 6
            else st.sampled_from(others) | NAMES)
        shape = data.draw(st.sampled_from(["list"] * 6 + ["context"] * 3 + ["none"]))
        context = None
        if shape != "none":
            target = (request.input.example_list_with_context if shape == "context"
                      else request.input.example_list)
            if shape == "context":
                context = data.draw(examples())
                target.context.CopyFrom(context)
            least = 0 if data.draw(st.integers(0, 9)) == 0 else 1
            target.examples.extend(data.draw(st.lists(examples(), min_size=least, max_size=3)))
        rpc = "Regress" if regress else "Classify"
        response, err = call(fuzz_tally, rpc, stub.Regress if regress else stub.Classify,
                             request)
        spec = request.model_spec
        key = spec.signature_name
        choice = spec.WhichOneof("version_choice")
        fits = (spec.name == "examples"
                and (choice is None or (choice == "version" and spec.version.value == 1))
                and key in (("regress_x",) if regress else ("classify_x", "scores_only")))
        rows = list(request.input.example_list.examples) + list(
            request.input.example_list_with_context.examples)
        xs = [effective_x(ex, context) for ex in rows]
        fuzz_tally.notes[f"{rpc}: fitting signature {fits}, rows {bool(rows)}, "
                         f"x valid {all(x is not None for x in xs)}"] += 1
        if not fits or not rows or any(x is None for x in xs):
            assert err is not None, f"{rpc} answered OK: {_short(request)}"
            check_refusal(err, request)
            return
        assert err is None, f"{rpc}: {err.code().name} {err.details()!r} for {_short(request)}"
        x = np.array(xs, np.float32)
        sane = np.isfinite(x).all() and np.abs(x).max() < 1e6
        if regress:
            got = [r.value for r in response.result.regressions]
            assert len(got) == len(rows)
            if sane:
                np.testing.assert_allclose(got, x.sum(axis=1), rtol=1e-5, atol=1e-5)
            return
        got = response.result.classifications
        assert len(got) == len(rows)
        labels = list(CLASS_NAMES) if key == "classify_x" else [""] * len(CLASS_NAMES)
        assert all([c.label for c in row.classes] == labels for row in got)
        if sane:
            np.testing.assert_allclose([[c.score for c in row.classes] for row in got],
                                       softmax_scores(x), rtol=1e-4, atol=1e-6)

    fuzz()
    assert fuzz_tally.requests >= 300
    assert fuzz_tally.count("Classify", "OK") and fuzz_tally.count("Regress", "OK")
    assert_unharmed(stub, baseline)


# -- REST :predict ---------------------------------------------------------------------------------
REST_PATHS = ("/v1/models/tiny:predict", "/v1/models/tiny/versions/1:predict",
              "/v1/models/tiny/labels/canary:predict", "/v1/models/tiny/labels/nope:predict",
              "/v1/models/tiny/versions/9:predict", "/v1/models/examples:predict",
              "/v1/models/nope:predict")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=16)
BAD_PIXELS = (256, -1, 1.5, "a", None, True, float("nan"), float("inf"), 2**70, [], {"b64": "AA=="})


@st.composite
def image_lists(draw):
    """Nested lists shaped [b, 8, 8, 3] (b in 0..3), sometimes with one value or row broken."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images = rng.integers(0, 256, size=(draw(st.integers(0, 3)), *IMAGE_SHAPE)).tolist()
    how = draw(st.sampled_from(["ok", "ok", "value", "ragged", "nest"]))
    if images and how == "value":
        images[0][rng.integers(8)][rng.integers(8)][rng.integers(3)] = draw(
            st.sampled_from(BAD_PIXELS))
    elif images and how == "ragged":
        del images[0][rng.integers(8)]
    elif how == "nest":
        images = [images]
    return images


@st.composite
def x_lists(draw):
    """[b, 2] float rows for the `examples` model (NaN/Inf travel as JSON NaN/Infinity)."""
    return draw(st.lists(st.lists(st.floats(width=32), min_size=2, max_size=2), max_size=3))


@st.composite
def rest_bodies(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return json.dumps(draw(JSON_VALUES)).encode()
    body = {}
    key = draw(st.sampled_from(["instances", "instances", "inputs", "inputs", "both", "neither"]))
    v = draw(st.integers(0, 9))
    value = draw(image_lists() if v < 5 else x_lists() if v < 7 else JSON_VALUES if v < 9
                 else st.lists(st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=2),
                               max_size=3))
    if key in ("instances", "both"):
        body["instances"] = value
    if key in ("inputs", "both"):
        body["inputs"] = draw(st.sampled_from([value, value, {"images": value}, {"x": value},
                                               {"images": value, "extra": 1}]))
    if draw(st.integers(0, 3)) == 0:
        body["signature_name"] = draw(st.sampled_from(
            ["serving_default", "classify_x", "regress_x", "", "nope"]) | JSON_VALUES)
    text = json.dumps(body).encode()
    if kind == 2:  # truncated JSON
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    return text


def post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    except TimeoutError:
        pytest.fail(f"REST POST {path} hung for more than {CALL_TIMEOUT} s on {body[:200]!r}")
    finally:
        conn.close()


def test_rest_predict_fuzz(baseline, server, stub, fuzz_tally):
    """Random JSON and malformed bytes to `:predict`: 200 with predictions/outputs, or 4xx with
    a JSON `{"error": ...}`; never a 5xx (but for the two reported bugs below), never a hang."""

    @settings(max_examples=200, **FUZZ_SETTINGS)
    @given(st.sampled_from(REST_PATHS[:3] * 2 + REST_PATHS), rest_bodies())
    def fuzz(path, body):
        code, raw = post(server.rest_port, path, body)
        answer = json.loads(raw)
        assert isinstance(answer, dict), raw[:200]
        if code == 200:
            fuzz_tally.add("REST :predict", "200")
            assert set(answer) in ({"predictions"}, {"outputs"}), raw[:200]
            return
        error = answer.get("error")
        assert isinstance(error, str) and error, raw[:200]
        fuzz_tally.add("REST :predict", str(code))
        assert 400 <= code < 500, f"HTTP {code} {error!r} for POST {path} {body[:300]!r}"

    fuzz()
    assert fuzz_tally.requests >= 200 and fuzz_tally.count("REST :predict", "200")
    assert_unharmed(stub, baseline)


def rest_sweep_bodies() -> list[tuple[str, bytes]]:
    """A deterministic grid of `:predict` bodies: values (valid and broken images, `x` rows,
    wrong types) x where they go (instances, inputs, named inputs, both), the same values with
    each signature name, and broken JSON (truncated, not JSON, not an object). (kind, body)."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(2, *IMAGE_SHAPE)).tolist()
    values = {"images": image, "no images": [], "one image, no batch": image[0],
              "nested once more": [image], "ragged": [image[0], image[1][:7]],
              "x rows": [[0.5, -1.0], [2.0, 3.0]], "x rows of 3": [[1.0, 2.0, 3.0]],
              "x rows with NaN": [[float("nan"), 1.0]], "strings": [["a"], ["b"]],
              "null": None, "number": 7, "text": "images", "object": {}}
    for i, bad in enumerate(BAD_PIXELS):
        broken = json.loads(json.dumps(image))
        broken[1][3][4][i % 3] = bad
        values[f"pixel {bad!r}"] = broken
    wheres = {"instances": lambda v: {"instances": v}, "inputs": lambda v: {"inputs": v},
              "inputs.images": lambda v: {"inputs": {"images": v}},
              "inputs.x": lambda v: {"inputs": {"x": v}},
              "inputs.images+extra": lambda v: {"inputs": {"images": v, "extra": 1}},
              "both": lambda v: {"instances": v, "inputs": v}}
    bodies = [(f"{where} = {name}", json.dumps(wrap(value)).encode())
              for name, value in values.items() for where, wrap in wheres.items()]
    for sig in ("classify_x", "regress_x", "nope", 7):
        bodies += [(f"signature {sig!r}, instances = {name}",
                    json.dumps({"signature_name": sig, "instances": value}).encode())
                   for name, value in values.items()]
    whole = json.dumps({"instances": image}).encode()
    bodies += [(f"truncated at {n}", whole[:n]) for n in (0, 1, 2, 13, 14, 100, len(whole) - 1)]
    bodies += [("not JSON", b) for b in (b"\xff\xfe", b"{'instances': 1}", b"NaN", b"[1,", b"\x00")]
    bodies += [("JSON, not an object", json.dumps(v).encode()) for v in (1, "x", [], [{}], None)]
    return bodies


def test_rest_predict_sweep(baseline, server, stub, fuzz_tally):
    """Every body of `rest_sweep_bodies` to each `:predict` path: 200 with predictions or
    outputs, or 4xx with a JSON error, never a 5xx or a hang; valid images to a served `tiny`
    answer 200 with the probabilities of the gRPC path."""
    bodies = rest_sweep_bodies()
    for path in REST_PATHS:
        for kind, body in bodies:
            code, raw = post(server.rest_port, path, body)
            fuzz_tally.add("REST :predict (sweep)", str(code))
            answer = json.loads(raw)
            where = f"POST {path} {kind}"
            assert isinstance(answer, dict), (where, raw[:200])
            if code == 200:
                assert set(answer) in ({"predictions"}, {"outputs"}), (where, raw[:200])
            else:
                assert 400 <= code < 500 and isinstance(answer.get("error"), str) and \
                    answer["error"], (where, code, raw[:200])
            if path in REST_PATHS[:3] and kind in ("instances = images", "inputs = images",
                                                   "inputs.images = images"):
                assert code == 200, (where, code, raw[:200])
    assert fuzz_tally.requests == len(REST_PATHS) * len(bodies) >= 1500
    assert_unharmed(stub, baseline)


# -- regressions: bugs the fuzzing found, now fixed ---------------------------------------------
def test_rest_deeply_nested_json_is_a_400(server):
    body = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    code, raw = post(server.rest_port, "/v1/models/tiny:predict", body)
    assert code == 400, (code, raw[:200])


def test_rest_ragged_string_list_is_a_400(server):
    body = json.dumps({"signature_name": "classify_x", "instances": [["a"], "b"]}).encode()
    code, raw = post(server.rest_port, "/v1/models/examples:predict", body)
    assert code == 400, (code, raw[:200])


def test_long_error_details_are_truncated_like_tf_serving(stub):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "n" * 20_000
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=CALL_TIMEOUT)
    err = info.value
    assert err.code() is grpc.StatusCode.NOT_FOUND, err.code()
    assert err.details() == ("Servable not found for request: Latest(" + "n" * 20_000)[:1024] \
        + "...TRUNCATED"
