"""Contract tests of the embedded model server, driven only through the official
`tensorflow_serving.apis` stubs (gRPC) and plain HTTP (REST), one per RPC and one per error case.

Expected messages are TF Serving 2.x's own text (see `serving/status.py` for the source files);
asserting the literal strings here catches any drift from them.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)

from serving.codec import from_ndarray, to_ndarray
from tests.serving.tiny_models import (
    CLASS_NAMES,
    IMAGE_SHAPE,
    W_EXAMPLES,
    model_spec,
    models_config_text,
)
from tests.serving.tiny_models import predict_request as tiny_request

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(5, *IMAGE_SHAPE), dtype=np.uint8)


def keras_probs(model, images):
    return tf.nn.softmax(model(images.astype(np.float32))).numpy()


def predict_request(images=IMAGES, **kwargs) -> predict_pb2.PredictRequest:
    """`tiny_models.predict_request` with this module's `IMAGES` by default."""
    return tiny_request(images, **kwargs)


def rpc_error(call, request, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30, **kw)
    return info.value


def example(x0: float, x1: float) -> example_pb2.Example:
    ex = example_pb2.Example()
    ex.features.feature["x"].CopyFrom(
        feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[x0, x1])))
    return ex


# -- Predict ---------------------------------------------------------------------------------------
def test_predict_latest_matches_keras_and_uses_float_val(server, stub):
    response = stub.Predict(predict_request(), timeout=30)
    assert response.model_spec.name == "tiny"
    assert response.model_spec.version.value == 2  # latest
    assert response.model_spec.signature_name == "serving_default"
    probs = response.outputs["probabilities"]
    assert len(probs.float_val) == IMAGES.shape[0] * len(CLASS_NAMES)
    assert probs.tensor_content == b""  # TF Serving answers in the typed repeated field
    np.testing.assert_allclose(to_ndarray(probs), keras_probs(server.keras_models[2], IMAGES),
                               atol=1e-5)
    assert set(response.outputs) == {"probabilities", "logits"}


def test_predict_specific_version_and_label(server, stub):
    v1 = stub.Predict(predict_request(version=1), timeout=30)
    assert v1.model_spec.version.value == 1
    np.testing.assert_allclose(to_ndarray(v1.outputs["probabilities"]),
                               keras_probs(server.keras_models[1], IMAGES), atol=1e-5)
    stable = stub.Predict(predict_request(label="stable"), timeout=30)
    assert stable.model_spec.version.value == 1
    canary = stub.Predict(predict_request(label="canary"), timeout=30)
    assert canary.model_spec.version.value == 2


def test_predict_output_filter(stub):
    response = stub.Predict(predict_request(output_filter=["logits"]), timeout=30)
    assert set(response.outputs) == {"logits"}


def test_predict_int_val_request_is_accepted(server, stub):
    request = predict_request(images=None)
    proto = request.inputs["images"]
    proto.dtype = from_ndarray(IMAGES).dtype
    for d in IMAGES.shape:
        proto.tensor_shape.dim.add().size = d
    proto.int_val.extend(IMAGES.ravel().tolist())
    response = stub.Predict(request, timeout=30)
    np.testing.assert_allclose(to_ndarray(response.outputs["probabilities"]),
                               keras_probs(server.keras_models[2], IMAGES), atol=1e-5)


def test_predict_empty_batch(stub):
    response = stub.Predict(predict_request(images=IMAGES[:0]), timeout=30)
    assert to_ndarray(response.outputs["probabilities"]).shape == (0, len(CLASS_NAMES))


def test_predict_message_over_4mib(server, stub):
    images = np.random.default_rng(1).integers(0, 256, size=(30_000, *IMAGE_SHAPE),
                                               dtype=np.uint8)
    assert images.nbytes > 4 * 2**20  # gRPC's default limit
    response = stub.Predict(predict_request(images=images), timeout=120)
    assert to_ndarray(response.outputs["probabilities"]).shape == (30_000, 3)


@pytest.mark.parametrize("kwargs, code, message", [
    (dict(name="nope"), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Latest(nope)"),
    (dict(version=7), grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(tiny, 7)"),
    (dict(label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
    (dict(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
    (dict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
])
def test_predict_lookup_errors(stub, kwargs, code, message):
    err = rpc_error(stub.Predict, predict_request(**kwargs))
    assert err.code() == code
    assert err.details() == message


def test_predict_missing_and_extra_inputs(stub):
    err = rpc_error(stub.Predict, predict_request(alias="pixels"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "Signature input alias: images(feed name: serving_default_images:0) not found in "
        "request and no default value provided. Inputs expected to be in the request {pixels}, "
        "or default input alias set: ")
    request = predict_request()
    request.inputs["extra"].CopyFrom(from_ndarray(np.zeros(2, np.float32)))
    err = rpc_error(stub.Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input size does not match signature: 2!=1" in err.details()
    assert "Sent extra: {extra}" in err.details()
    err = rpc_error(stub.Predict, predict_request(images=None))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Missing but required: {images}" in err.details()


def test_predict_bad_output_filter(stub):
    err = rpc_error(stub.Predict, predict_request(output_filter=["nope"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == (
        "output tensor alias not found in signature: nope Outputs expected to be in the set "
        "{logits,probabilities}.")
    err = rpc_error(stub.Predict, predict_request(output_filter=["logits", "logits"]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "duplicate output tensor alias: logits"


def test_predict_wrong_dtype_never_reaches_graph(stub):
    err = rpc_error(stub.Predict, predict_request(images=IMAGES.astype(np.float32)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "uint8" in err.details() and "float" in err.details()


@pytest.mark.parametrize("shape", [(2, 8, 8), (8, 8, 3), (2, 8, 8, 3, 1), (2, 9, 8, 3),
                                   (2, 8, 8, 1), ()])
def test_predict_wrong_rank_or_shape_is_refused(server, stub, shape):
    # A wrong-rank Conv2D input aborts TensorFlow 2.21 on this CPU: the server must refuse it.
    err = rpc_error(stub.Predict, predict_request(images=np.zeros(shape, np.uint8)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images" in err.details()
    assert stub.Predict(predict_request(), timeout=30).outputs["probabilities"].float_val


def test_predict_truncated_tensor_content(stub):
    request = predict_request()
    proto = request.inputs["images"]
    proto.tensor_content = proto.tensor_content[:-3]
    err = rpc_error(stub.Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "tensor parsing error: images"


def test_deadline_exceeded(stub):
    images = np.zeros((30_000, *IMAGE_SHAPE), np.uint8)  # takes far longer than 1 ms to run
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request(images=images), timeout=0.001)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- GetModelMetadata ------------------------------------------------------------------------------
def test_get_model_metadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    response = stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == "tiny"
    assert response.model_spec.version.value == 2
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["images"].dtype == 4  # DT_UINT8
    assert [d.size for d in sig.inputs["images"].tensor_shape.dim] == [-1, *IMAGE_SHAPE]
    assert set(sig.outputs) == {"probabilities", "logits"}


def test_get_model_metadata_errors(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "tiny"
    err = rpc_error(stub.GetModelMetadata, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "GetModelMetadataRequest must specify at least one metadata_field"
    request.metadata_field.append("nope")
    err = rpc_error(stub.GetModelMetadata, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    # TF Serving passes a printf-style template to a StrCat-based helper: "%s" stays literal.
    assert err.details() == "Metadata field %s is not supportednope"


# -- Classify / Regress / MultiInference ---------------------------------------------------------
def _x_scores(rows):
    logits = np.array(rows, np.float32) @ W_EXAMPLES
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def to_examples(request_type, signature: str):
    """A Classify or Regress request to signature `signature` of the `examples` model."""
    return request_type(model_spec=model_spec("examples", signature=signature))


def test_classify(stub):
    request = to_examples(classification_pb2.ClassificationRequest, "classify_x")
    request.input.example_list.examples.extend([example(1, 2), example(-1, 0.5)])
    response = stub.Classify(request, timeout=30)
    assert response.model_spec.version.value == 1
    want = _x_scores([[1, 2], [-1, 0.5]])
    for row, scores in zip(response.result.classifications, want):
        assert [c.label for c in row.classes] == list(CLASS_NAMES)
        np.testing.assert_allclose([c.score for c in row.classes], scores, rtol=1e-5)


def test_classify_with_context_merges_features(stub):
    request = to_examples(classification_pb2.ClassificationRequest, "scores_only")
    ctx = request.input.example_list_with_context
    ctx.context.CopyFrom(example(5, 5))
    ctx.examples.add()  # empty example: takes x from the context
    ctx.examples.add().CopyFrom(example(1, 2))  # its own x overrides the context's
    response = stub.Classify(request, timeout=30)
    got = [[c.score for c in row.classes] for row in response.result.classifications]
    np.testing.assert_allclose(got, _x_scores([[5, 5], [1, 2]]), rtol=1e-5)
    assert response.result.classifications[0].classes[0].label == ""


def test_regress(stub):
    request = to_examples(regression_pb2.RegressionRequest, "regress_x")
    request.input.example_list.examples.extend([example(1, 2), example(-1, 0.5)])
    response = stub.Regress(request, timeout=30)
    np.testing.assert_allclose([r.value for r in response.result.regressions], [3.0, -0.5])


def test_classify_errors(stub):
    request = to_examples(classification_pb2.ClassificationRequest, "regress_x")
    request.input.example_list.examples.add().CopyFrom(example(1, 2))
    err = rpc_error(stub.Classify, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == ("Expected classification signature method_name to be "
                             "tensorflow/serving/classify. Was: tensorflow/serving/regress")
    request.model_spec.signature_name = "classify_x"
    request.input.Clear()
    err = rpc_error(stub.Classify, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "Input is empty."


def test_multi_inference(stub):
    request = inference_pb2.MultiInferenceRequest()
    for sig, method in (("classify_x", "tensorflow/serving/classify"),
                        ("regress_x", "tensorflow/serving/regress")):
        task = request.tasks.add()
        task.model_spec.name = "examples"
        task.model_spec.signature_name = sig
        task.method_name = method
    request.input.example_list.examples.extend([example(1, 2)])
    response = stub.MultiInference(request, timeout=30)
    assert len(response.results) == 2
    scores = [c.score for c in response.results[0].classification_result.classifications[0]
              .classes]
    np.testing.assert_allclose(scores, _x_scores([[1, 2]])[0], rtol=1e-5)
    assert response.results[1].regression_result.regressions[0].value == pytest.approx(3.0)


def test_multi_inference_errors(stub):
    request = inference_pb2.MultiInferenceRequest()
    for name in ("examples", "tiny"):
        task = request.tasks.add()
        task.model_spec.name = name
        task.model_spec.signature_name = "classify_x"
        task.method_name = "tensorflow/serving/classify"
    request.input.example_list.examples.extend([example(1, 2)])
    err = rpc_error(stub.MultiInference, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "same model" in err.details()
    request.tasks[1].model_spec.name = "examples"
    err = rpc_error(stub.MultiInference, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Duplicate evaluation of signature: classify_x" in err.details()


# -- ModelService ----------------------------------------------------------------------------------
def _status_request(name, version=None, label=None):
    return get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_spec(name, version=version, label=label))


def test_get_model_status(model_stub):
    response = model_stub.GetModelStatus(_status_request("tiny"), timeout=30)
    got = [(s.version, s.state, s.status.error_code) for s in response.model_version_status]
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert got == [(2, available, 0), (1, available, 0)]
    one = model_stub.GetModelStatus(_status_request("tiny", version=1), timeout=30)
    assert [s.version for s in one.model_version_status] == [1]
    # TF Serving's GetModelStatus does not consult version labels: every version is listed.
    labelled = model_stub.GetModelStatus(_status_request("tiny", label="canary"), timeout=30)
    assert [s.version for s in labelled.model_version_status] == [2, 1]


def test_get_model_status_errors(model_stub):
    err = rpc_error(model_stub.GetModelStatus, _status_request("nope"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Could not find any versions of model nope"
    err = rpc_error(model_stub.GetModelStatus, _status_request("tiny", version=9))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "Could not find version 9 of model tiny"


def test_new_version_folder_is_polled_and_half_written_is_not(server, stub, model_stub):
    base = server.base / "tiny"
    half = base / "5"
    half.mkdir()
    (half / "variables").mkdir()  # no saved_model.pb yet: an exporter still writing
    time.sleep(1.0)
    assert stub.Predict(predict_request(), timeout=30).model_spec.version.value == 2
    shutil.copytree(base / "1", base / "3")
    deadline = time.time() + 20
    while time.time() < deadline:
        if stub.Predict(predict_request(), timeout=30).model_spec.version.value == 3:
            break
        time.sleep(0.2)
    else:
        pytest.fail("version 3 was not picked up by polling")
    shutil.rmtree(half)


def test_reload_config(server, stub, model_stub):
    config = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(models_config_text(server.base, policy="specific { versions: 1 }",
                                         labels={"stable": 1}), config.config)
    response = model_stub.HandleReloadConfigRequest(config, timeout=60)
    assert response.status.error_code == 0
    statuses = model_stub.GetModelStatus(_status_request("tiny"), timeout=30)
    states = {s.version: s.state for s in statuses.model_version_status}
    assert states[1] == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states[2] == get_model_status_pb2.ModelVersionStatus.END
    assert stub.Predict(predict_request(), timeout=30).model_spec.version.value == 1

    duplicate = model_management_pb2.ReloadConfigRequest()
    duplicate.config.CopyFrom(config.config)
    duplicate.config.model_config_list.config.add().CopyFrom(
        config.config.model_config_list.config[0])
    err = rpc_error(model_stub.HandleReloadConfigRequest, duplicate)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tiny" in err.details()
    # the failed reload changed nothing
    assert stub.Predict(predict_request(), timeout=30).model_spec.version.value == 1
    restore = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(models_config_text(server.base), restore.config)
    model_stub.HandleReloadConfigRequest(restore, timeout=60)


# -- REST ------------------------------------------------------------------------------------------
def _http(server, method, path, body=None):
    url = f"http://127.0.0.1:{server.rest_port}{path}"
    data = None if body is None else (body if isinstance(body, bytes)
                                      else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_rest_status_and_metadata(server):
    code, body = _http(server, "GET", "/v1/models/tiny/versions/1")
    assert code == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK",
                                                           "error_message": ""}}]}
    code, body = _http(server, "GET", "/v1/models/tiny/metadata")
    assert code == 200
    sig = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert body["model_spec"]["name"] == "tiny"


def test_rest_predict_row_and_columnar(server):
    want = keras_probs(server.keras_models[1], IMAGES[:2])
    code, body = _http(server, "POST", "/v1/models/tiny/labels/stable:predict",
                       {"signature_name": "serving_default",
                        "instances": [{"images": im.tolist()} for im in IMAGES[:2]]})
    assert code == 200
    assert len(body["predictions"]) == 2
    np.testing.assert_allclose([p["probabilities"] for p in body["predictions"]], want,
                               atol=1e-5)
    code, body = _http(server, "POST", "/v1/models/tiny/versions/1:predict",
                       {"inputs": IMAGES[:2].tolist()})
    assert code == 200
    np.testing.assert_allclose(body["outputs"]["probabilities"], want, atol=1e-5)


def test_rest_classify_and_regress(server):
    code, body = _http(server, "POST", "/v1/models/examples:classify",
                       {"signature_name": "classify_x", "examples": [{"x": [1.0, 2.0]}]})
    assert code == 200
    assert [c[0] for c in body["results"][0]] == list(CLASS_NAMES)
    np.testing.assert_allclose([c[1] for c in body["results"][0]], _x_scores([[1, 2]])[0],
                               rtol=1e-5)
    code, body = _http(server, "POST", "/v1/models/examples:regress",
                       {"signature_name": "regress_x", "examples": [{"x": [1.0, 2.0]}]})
    assert code == 200 and body["results"] == [pytest.approx(3.0)]


@pytest.mark.parametrize("method, path, body, http_code, fragment", [
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("POST", "/v1/models/nope:predict", {"instances": [1]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/tiny:predict", b"{not json", 400, "JSON Parse error"),
    ("POST", "/v1/models/tiny:predict", {"signature_name": ""}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/tiny:predict", {"inputs": [[1, 2], [3]]}, 400, "images"),
    ("POST", "/v1/models/tiny:predict", {"inputs": [1, 2, 3]}, 400, "images"),
    ("POST", "/v1/models/tiny:predict", {"instances": [1], "signature_name": "nope"}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("GET", "/v1/models/tiny:predict", None, 400, "Malformed request: GET /v1/models/tiny"),
])
def test_rest_errors(server, method, path, body, http_code, fragment):
    code, answer = _http(server, method, path, body)
    assert code == http_code
    assert fragment in answer["error"]


# -- refused requests leave the server as it was -------------------------------------------------
def test_refused_requests_leave_the_server_correct(server, stub):
    """Requests the server refuses (wrong dtype, wrong rank, truncated content, a missing
    input, JSON that does not parse) leave it answering as before: all sent here, in this
    test's own order, so the check holds however the other tests are ordered or spread."""
    truncated = predict_request(version=1)
    truncated.inputs["images"].tensor_content = truncated.inputs["images"].tensor_content[:-1]
    for request in (predict_request(images=IMAGES.astype(np.float32), version=1),
                    predict_request(images=IMAGES[0], version=1), truncated,
                    predict_request(images=None, version=1)):
        assert rpc_error(stub.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _http(server, "POST", "/v1/models/tiny/versions/1:predict", b"{not json")[0] == 400
    response = stub.Predict(predict_request(version=1), timeout=30)
    np.testing.assert_allclose(to_ndarray(response.outputs["probabilities"]),
                               keras_probs(server.keras_models[1], IMAGES), atol=1e-5)
