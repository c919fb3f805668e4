"""Tests for `serving.client.ServingClient` against a fake TF Serving on a real gRPC server.

The fake (`FakeServing`) implements PredictionService and ModelService with a hand-built
SignatureDef and answers Predict with a known function (softmax of each image's channel means),
so the tests can inject faults (UNAVAILABLE for the first K calls, slowness, NOT_FOUND, ...) and
record what the client sent (metadata, batch sizes, dtypes, concurrency).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from common.errors import UsageError
from serving.client import ServingClient, ServingError, SignatureInfo, VersionStatus

MODEL = "cifar10_cnn"


def tensor_info(name: str, dtype: int, shape: list[int] | None) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=f"{name}:0", dtype=dtype)
    if shape is None:
        info.tensor_shape.unknown_rank = True
    else:
        info.tensor_shape.CopyFrom(
            tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in shape]
            )
        )
    return info


def signature_def(inputs: dict, outputs: dict) -> meta_graph_pb2.SignatureDef:
    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for name, (dtype, shape) in inputs.items():
        sig.inputs[name].CopyFrom(tensor_info(name, dtype, shape))
    for name, (dtype, shape) in outputs.items():
        sig.outputs[name].CopyFrom(tensor_info(name, dtype, shape))
    return sig


# A Keras-style export: odd names, uint8 16x16 RGB in, 3 probabilities + an extra output out.
ODD_SIGNATURE = signature_def(
    {"input_1": (types_pb2.DT_UINT8, [-1, 16, 16, 3])},
    {"dense": (types_pb2.DT_FLOAT, [-1, 3]), "classes": (types_pb2.DT_INT64, [-1])},
)


def expected_probabilities(images: np.ndarray) -> np.ndarray:
    means = images.astype(np.float64).mean(axis=(1, 2)) / 255.0
    exp = np.exp(means - means.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class FakeServing(
    prediction_service_pb2_grpc.PredictionServiceServicer,
    model_service_pb2_grpc.ModelServiceServicer,
):
    """A scriptable TF Serving double: serves `signatures`, answers Predict, injects faults."""

    def __init__(self, signatures: dict[str, meta_graph_pb2.SignatureDef]) -> None:
        self.signatures = signatures
        self.fail_first = 0  # Predict calls answered UNAVAILABLE before succeeding
        self.fail_code: grpc.StatusCode | None = None  # every Predict fails with it
        self.fail_details = "Servable not found for request: Latest(cifar10_cnn)"
        self.sleep = 0.0  # seconds each Predict takes
        self.sleep_fn = None  # images -> seconds, overrides `sleep`
        self.status_script: list = []  # GetModelStatus answers, popped in order
        self.lock = threading.Lock()
        self.predict_calls = 0
        self.metadata_calls = 0
        self.batch_sizes: list[int] = []
        self.received: list[np.ndarray] = []
        self.output_filters: list[list[str]] = []
        self.seen_metadata: list[dict[str, str]] = []
        self.active = 0
        self.max_active = 0

    def _record_metadata(self, context) -> None:
        with self.lock:
            self.seen_metadata.append({k: v for k, v in context.invocation_metadata()})

    def GetModelMetadata(self, request, context):
        self._record_metadata(context)
        with self.lock:
            self.metadata_calls += 1
        if request.model_spec.name != MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Model {request.model_spec.name} not found")
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = MODEL
        response.model_spec.version.value = 1
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signatures.items():
            signature_map.signature_def[key].CopyFrom(value)
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def Predict(self, request, context):
        self._record_metadata(context)
        with self.lock:
            self.predict_calls += 1
            call = self.predict_calls
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if call <= self.fail_first:
                context.abort(grpc.StatusCode.UNAVAILABLE, "Connection reset (injected)")
            if self.fail_code is not None:
                context.abort(self.fail_code, self.fail_details)
            arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            images = next(iter(arrays.values()))
            delay = self.sleep_fn(images) if self.sleep_fn else self.sleep
            if delay:
                time.sleep(delay)
            with self.lock:
                self.batch_sizes.append(len(images))
                self.received.append(images)
                self.output_filters.append(list(request.output_filter))
            signature = self.signatures[request.model_spec.signature_name or "serving_default"]
            response = predict_pb2.PredictResponse()
            for name, info in signature.outputs.items():
                if request.output_filter and name not in request.output_filter:
                    continue
                pixels = images if images.ndim == 4 else images[:, None, None, :]
                value = expected_probabilities(pixels)
                if len(info.tensor_shape.dim) == 1:
                    value = value.argmax(axis=1).astype(np.int64)
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
            return response
        finally:
            with self.lock:
                self.active -= 1

    def GetModelStatus(self, request, context):
        self._record_metadata(context)
        step = self.status_script.pop(0) if self.status_script else "AVAILABLE"
        if isinstance(step, grpc.StatusCode):
            context.abort(step, "injected")
        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add(version=1)
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(step)
        return response


@pytest.fixture
def serve():
    """`serve(signatures) -> (fake, target)`: a fake TF Serving on 127.0.0.1, stopped after."""
    servers = []

    def start(signatures=None, address="127.0.0.1:0"):
        fake = FakeServing(signatures or {"serving_default": ODD_SIGNATURE})
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(fake, server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(fake, server)
        port = server.add_insecure_port(address)
        server.start()
        servers.append(server)
        target = address if address.startswith("unix:") else f"127.0.0.1:{port}"
        return fake, target

    yield start
    for server in servers:
        server.stop(None)


def random_images(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------- signature


def test_metadata_discovers_odd_names(serve):
    fake, target = serve()
    with ServingClient(target, MODEL) as client:
        info = client.metadata()
        assert client.metadata() is info  # cached: one RPC
        assert fake.metadata_calls == 1
        assert client.metadata(refresh=True) == info and fake.metadata_calls == 2
    assert isinstance(info, SignatureInfo)
    assert info.input_name == "input_1"
    assert info.input_dtype == np.uint8
    assert info.input_shape == (None, 16, 16, 3)
    assert info.probabilities == "dense"
    assert info.image_size == (16, 16) and info.channels == 3 and info.num_classes == 3
    assert set(info.output_names) == {"dense", "classes"}
    assert info.output("classes").dtype == np.int64
    assert info.method_name == "tensorflow/serving/predict"


def test_probabilities_output_preferred_and_ambiguity_names_outputs(serve):
    ambiguous = signature_def(
        {"x": (types_pb2.DT_FLOAT, [-1, -1, -1, 3])},
        {"logits": (types_pb2.DT_FLOAT, [-1, 3]), "scores": (types_pb2.DT_FLOAT, [-1, 3])},
    )
    named = signature_def(
        {"x": (types_pb2.DT_FLOAT, [-1, 8, 8, 1])},
        {"logits": (types_pb2.DT_FLOAT, [-1, 3]), "probabilities": (types_pb2.DT_FLOAT, [-1, 3])},
    )
    _, target = serve({"serving_default": ambiguous, "named": named})
    with ServingClient(target, MODEL) as client:
        with pytest.raises(UsageError, match=r"`output`.*\['logits', 'scores'\]"):
            client.metadata()
    with ServingClient(target, MODEL, output="scores") as client:
        info = client.metadata()
        assert info.probabilities == "scores" and info.image_size is None
    with ServingClient(target, MODEL, signature="named") as client:
        assert client.metadata().probabilities == "probabilities"
    with ServingClient(target, MODEL, output="nope") as client:
        with pytest.raises(UsageError, match=r"`output`.*logits"):
            client.metadata()


def test_not_an_image_classifier_is_a_clear_error_and_predict_raw_works(serve):
    logistic = signature_def(
        {"features": (types_pb2.DT_FLOAT, [-1, 4])},
        {"probabilities": (types_pb2.DT_FLOAT, [-1, 4])},
    )
    fake, target = serve({"serving_default": logistic})
    with ServingClient(target, MODEL) as client:
        with pytest.raises(UsageError, match=r"image classifier.*features: float32\[-1,4\]"):
            client.metadata()
        with pytest.raises(UsageError, match="image classifier"):
            client.predict(random_images(2))
        assert fake.predict_calls == 0
        features = np.arange(8, dtype=np.float32).reshape(2, 4)
        out = client.predict_raw({"features": features})
        np.testing.assert_allclose(
            out["probabilities"], expected_probabilities(features[:, None, None, :] * 1.0),
            rtol=1e-6,
        )
        assert client.queries == 2
        with pytest.raises(UsageError, match=r"`inputs`.*features"):
            client.predict_raw({"wrong": features})
        with pytest.raises(UsageError, match="`output_filter`"):
            client.predict_raw({"features": features}, output_filter=["nope"])


def test_unknown_signature_lists_available_ones(serve):
    _, target = serve()
    with ServingClient(target, MODEL, signature="missing") as client:
        with pytest.raises(UsageError, match=r"`signature`.*\['serving_default'\]"):
            client.metadata()


# ------------------------------------------------------------------------------------ predict


def test_predict_adapts_size_channels_and_dtype(serve):
    fake, target = serve()
    with ServingClient(target, MODEL) as client:
        # 32x32 float64 grayscale, constant per image: resized to 16x16 uint8 RGB, rounded.
        values = np.array([12.6, 200.2, 300.0])  # 300 is clipped to 255
        gray = np.broadcast_to(values[:, None, None, None], (3, 32, 32, 1)).copy()
        probabilities = client.predict(gray)
    sent = fake.received[0]
    assert sent.dtype == np.uint8 and sent.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(sent[:, 0, 0, 0], [13, 200, 255])
    assert (sent == sent[:, :1, :1, :1]).all()
    np.testing.assert_allclose(probabilities, expected_probabilities(sent), rtol=1e-6)
    assert fake.output_filters == [["dense"]]


def test_downsizing_is_antialiased_and_matching_sizes_pass_unchanged(serve):
    fake, target = serve()
    checkerboard = (np.indices((32, 32)).sum(axis=0) % 2 * 255).astype(np.uint8)
    images = np.repeat(checkerboard[None, :, :, None], 3, axis=3)
    exact = random_images(2)
    with ServingClient(target, MODEL) as client:
        client.predict(images)
        client.predict(exact)
    assert np.abs(fake.received[0].astype(int) - 128).max() <= 4  # averaged, not sampled
    np.testing.assert_array_equal(fake.received[1], exact)


def test_float_signature_keeps_pixel_range(serve):
    float_sig = signature_def(
        {"pixels": (types_pb2.DT_FLOAT, [-1, 16, 16, 3])},
        {"probabilities": (types_pb2.DT_FLOAT, [-1, 3])},
    )
    fake, target = serve({"serving_default": float_sig})
    images = random_images(4)
    with ServingClient(target, MODEL) as client:
        client.predict(images)
    assert fake.received[0].dtype == np.float32
    np.testing.assert_array_equal(fake.received[0], images.astype(np.float32))


def test_batches_in_order_with_bounded_in_flight_and_exact_rows(serve):
    fake, target = serve()
    # Earlier batches answer later, so completions arrive out of order.
    fake.sleep_fn = lambda images: 0.25 - 0.02 * (int(images[0, 0, 0, 0]) % 10)
    images = random_images(130)
    images[:, 0, 0, 0] = np.arange(130) // 13  # batch index of a batch of 13
    progress = []
    with ServingClient(target, MODEL, batch_size=13, max_in_flight=3) as client:
        probabilities = client.predict(images, on_batch=lambda d, t: progress.append((d, t)))
        assert client.queries == 130 and client.requests == 11  # metadata + 10 Predict
    np.testing.assert_allclose(probabilities, expected_probabilities(images), rtol=1e-6)
    assert sorted(fake.batch_sizes) == [13] * 10 and sum(fake.batch_sizes) == 130
    assert fake.max_active == 3
    assert progress[-1] == (130, 130) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_on_send_and_on_result_report_each_batch_once(serve):
    fake, target = serve()
    fake.sleep_fn = lambda images: 0.1 - 0.01 * (int(images[0, 0, 0, 0]) % 10)
    images = random_images(50)
    images[:, 0, 0, 0] = np.arange(50) // 10
    sent, answered, lock = [], {}, threading.Lock()

    def on_send(first, rows):
        with lock:
            sent.append((first, rows))

    def on_result(first, answer):
        with lock:
            assert first not in answered
            answered[first] = answer

    with ServingClient(target, MODEL, batch_size=10, max_in_flight=2) as client:
        probabilities = client.predict(images, on_send=on_send, on_result=on_result)
    assert sorted(sent) == [(i, 10) for i in range(0, 50, 10)]
    assert sorted(answered) == [0, 10, 20, 30, 40]
    for first, answer in answered.items():
        np.testing.assert_array_equal(answer, probabilities[first:first + 10])


def test_batches_in_flight_at_an_interruption_still_reach_on_result(serve):
    fake, target = serve()
    fake.sleep_fn = lambda images: 0.05 if int(images[0, 0, 0, 0]) == 0 else 0.3
    images = random_images(40)
    images[:, 0, 0, 0] = np.arange(40) // 4
    sent, delivered = [], []

    def interrupt(done, total):  # runs in the caller's thread, like a Ctrl-C there
        raise KeyboardInterrupt

    with ServingClient(target, MODEL, batch_size=4, max_in_flight=2) as client:
        with pytest.raises(KeyboardInterrupt):
            client.predict(images, on_batch=interrupt,
                           on_send=lambda first, rows: sent.append(first),
                           on_result=lambda first, answer: delivered.append(first))
    # every batch that went on the wire was delivered, even those in flight at the interruption;
    # the rest was never sent
    assert sorted(delivered) == sorted(sent) and 2 <= len(sent) < 10


def test_a_failing_on_result_stops_the_next_batch_from_being_sent(serve):
    # on_result runs in the worker thread: its failure must keep that same worker from taking
    # the next batch (a journal callback failing means the answers are not being recorded)
    fake, target = serve()
    images = random_images(40)
    sent = []

    def on_result(first, answer):
        raise RuntimeError("journal full")

    for _ in range(5):  # before the fix the worker sent the next batch here every time
        sent.clear()
        with ServingClient(target, MODEL, batch_size=4, max_in_flight=1) as client:
            with pytest.raises(RuntimeError, match="journal full"):
                client.predict(images, on_send=lambda first, rows: sent.append(first),
                               on_result=on_result)
        assert sent == [0]


def test_exact_row_count_and_several_outputs(serve):
    fake, target = serve()
    images = random_images(130)
    with ServingClient(target, MODEL) as client:  # default batch size 64
        out = client.predict(images, outputs=["dense", "classes"])
        assert client.queries == 130
        empty = client.predict(images[:0])
    assert sorted(fake.batch_sizes) == [2, 64, 64]
    assert set(out) == {"dense", "classes"} and out["classes"].shape == (130,)
    np.testing.assert_array_equal(out["classes"], out["dense"].argmax(axis=1))
    assert fake.output_filters[0] == ["dense", "classes"]
    assert empty.shape == (0, 3) and fake.predict_calls == 3


def test_bad_images_and_outputs_send_nothing(serve):
    fake, target = serve()
    with ServingClient(target, MODEL) as client:
        with pytest.raises(UsageError, match=r"`images`.*\(16, 16, 3\)"):
            client.predict(random_images(1)[0])
        with pytest.raises(UsageError, match=r"`images`.*channels"):
            client.predict(np.zeros((1, 16, 16, 2), np.uint8))
        with pytest.raises(UsageError, match="`outputs`"):
            client.predict(random_images(1), outputs="nope")
        with pytest.raises(UsageError, match="`images`.*NaN"):
            client.predict(np.full((1, 16, 16, 3), np.nan))
    assert fake.predict_calls == 0


# ------------------------------------------------------------------------- retries and errors


def test_retries_unavailable_with_backoff_then_succeeds(serve):
    fake, target = serve()
    fake.fail_first = 3
    with ServingClient(target, MODEL, retries=5, backoff=0.05) as client:
        started = time.monotonic()
        client.predict(random_images(4))
        elapsed = time.monotonic() - started
        assert client.retries_done == 3 and client.queries == 4
    assert fake.predict_calls == 4 and fake.batch_sizes == [4]
    assert elapsed >= (0.05 + 0.1 + 0.2) / 2  # equal jitter: at least half of each delay


@pytest.mark.parametrize(
    ("fault", "kwargs", "retried", "code"),
    [({"fail_first": 100}, {"retries": 2, "backoff": 0.01}, 2, grpc.StatusCode.UNAVAILABLE),
     ({"fail_code": grpc.StatusCode.INVALID_ARGUMENT}, {"retries": 5, "backoff": 0.01}, 0,
      grpc.StatusCode.INVALID_ARGUMENT),
     ({"fail_code": grpc.StatusCode.RESOURCE_EXHAUSTED}, {"retries": 5, "backoff": 0.01}, 0,
      grpc.StatusCode.RESOURCE_EXHAUSTED),
     # a per-RPC deadline: the server may have answered, so it is never retried
     ({"sleep": 1.0}, {"timeout": 0.2, "retries": 3}, 0, grpc.StatusCode.DEADLINE_EXCEEDED)],
    ids=["unavailable-gives-up", "invalid-argument", "resource-exhausted", "per-rpc-deadline"],
)
def test_failures_are_retried_only_when_safe(serve, fault, kwargs, retried, code):
    fake, target = serve()
    for name, value in fault.items():
        setattr(fake, name, value)
    with ServingClient(target, MODEL, **kwargs) as client:
        with pytest.raises(ServingError) as caught:
            client.predict(random_images(4))
        assert client.retries_done == retried and client.queries == 0
    assert caught.value.code == code and fake.predict_calls == retried + 1
    assert code.name in str(caught.value) and MODEL in str(caught.value)


def test_resource_exhausted_retried_when_configured(serve):
    fake, target = serve()
    fake.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    client = ServingClient(target, MODEL, retries=2, backoff=0.01, retry_resource_exhausted=True)
    with client, pytest.raises(ServingError, match="RESOURCE_EXHAUSTED"):
        client.predict(random_images(4))
    assert fake.predict_calls == 3


def test_error_message_names_target_model_and_code(serve):
    fake, target = serve()
    fake.fail_code = grpc.StatusCode.NOT_FOUND
    with ServingClient(target, MODEL) as client:
        with pytest.raises(ServingError) as caught:
            client.predict(random_images(2))
    err = caught.value
    assert str(err) == (
        f"Predict on model '{MODEL}' at {target} failed: NOT_FOUND: "
        "Servable not found for request: Latest(cifar10_cnn)"
    )
    assert (err.target, err.model, err.code) == (target, MODEL, grpc.StatusCode.NOT_FOUND)
    assert err.details.startswith("Servable not found")


def test_overall_deadline_stops_sending(serve):
    fake, target = serve()
    fake.sleep = 0.15
    with ServingClient(target, MODEL, batch_size=1, max_in_flight=1) as client:
        started = time.monotonic()
        with pytest.raises(ServingError, match="DEADLINE_EXCEEDED"):
            client.predict(random_images(20), deadline=0.5)
        assert time.monotonic() - started < 1.0
    assert fake.predict_calls < 20


def test_unreachable_server_is_unavailable_after_retries():
    with ServingClient("127.0.0.1:1", MODEL, retries=1, backoff=0.01, timeout=2) as client:
        with pytest.raises(ServingError) as caught:
            client.metadata()
        assert client.retries_done == 1
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "GetModelMetadata on model 'cifar10_cnn' at 127.0.0.1:1" in str(caught.value)


# --------------------------------------------------------------------- identity and the channel


@pytest.mark.parametrize(
    ("header", "sent"), [("x-api-key", "k-123"), ("authorization", "Bearer k-123")]
)
def test_api_key_sent_in_metadata(serve, header, sent):
    fake, target = serve()
    with ServingClient(target, MODEL, api_key="k-123", api_key_header=header) as client:
        client.predict(random_images(1))
        client.model_status()
    assert len(fake.seen_metadata) == 3
    assert all(seen.get(header) == sent for seen in fake.seen_metadata)


@pytest.mark.parametrize(
    "target",
    ["", "localhost", "localhost:", "localhost:0", "localhost:99999", "host:port",
     "http://localhost:8500", " localhost:8500", "[::1]", "[::1]8500", "unix:", "a b:8500"],
)
def test_bad_target_rejected_before_connecting(monkeypatch, target):
    def no_channel(*args, **kwargs):
        raise AssertionError("a channel was opened")

    monkeypatch.setattr(grpc, "insecure_channel", no_channel)
    with pytest.raises(UsageError, match=r"argument `target`"):
        ServingClient(target, MODEL)


@pytest.mark.parametrize("target", ["localhost:8500", "10.0.0.1:1", "[::1]:8500",
                                    "unix:/tmp/s.sock", "unix:///tmp/s.sock", "dns:///h.io:80"])
def test_good_targets_accepted(target):
    with ServingClient(target, MODEL) as client:
        assert client.target == target


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [({"batch_size": 0}, "batch_size"), ({"max_in_flight": 0}, "max_in_flight"),
     ({"timeout": 0}, "timeout"), ({"retries": -1}, "retries"), ({"model": ""}, "model"),
     ({"version": 1, "version_label": "stable"}, "version_label"),
     ({"api_key_header": "X-Api-Key"}, "api_key_header"),
     ({"max_message_bytes": 2**31}, "max_message_bytes")],
)
def test_bad_arguments(kwargs, argument):
    kwargs = {"model": MODEL, **kwargs}
    with pytest.raises(UsageError, match=f"argument `{argument}`"):
        ServingClient("localhost:8500", **kwargs)


def test_unix_socket_and_closed_client(serve, tmp_path):
    _, target = serve(address=f"unix:{tmp_path}/serving.sock")
    client = ServingClient(target, MODEL)
    with client:
        assert client.predict(random_images(2)).shape == (2, 3)
    with pytest.raises(RuntimeError, match="closed"):
        client.predict(random_images(2))


# -------------------------------------------------------------------------------- model status


def test_model_status_and_wait_until_available(serve):
    fake, target = serve()
    fake.status_script = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, "LOADING"]
    with ServingClient(target, MODEL, version=1) as client:
        assert client.wait_until_available(timeout=5, poll=0.01) == 1
        assert fake.status_script == []
        assert client.model_status() == [VersionStatus(1, "AVAILABLE", "OK", "")]
        fake.status_script = ["LOADING"] * 1000
        with pytest.raises(ServingError, match=r"DEADLINE_EXCEEDED.*version 1 LOADING"):
            client.wait_until_available(timeout=1.0, poll=0.05)  # 1 s: slack on a loaded machine
        fake.status_script = [grpc.StatusCode.PERMISSION_DENIED]
        with pytest.raises(ServingError, match="PERMISSION_DENIED"):
            client.wait_until_available(timeout=5, poll=0.01)


# ----------------------------------------------------------------- against the embedded server


def test_against_embedded_model_server(server):
    """The same client against the real embedded server (`server` fixture of conftest.py)."""
    import keras

    images = random_images(10, size=16)  # the model takes 8x8: resized by the client
    target = f"127.0.0.1:{server.port}"
    with ServingClient(target, "tiny", version_label="canary", batch_size=4,
                       max_in_flight=2) as client:
        assert client.wait_until_available(timeout=30) == 2
        info = client.metadata()
        assert info.image_size == (8, 8) and info.input_dtype == np.uint8
        assert info.probabilities == "probabilities"
        probabilities = client.predict(images)
        assert client.queries == 10
    resized = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
        images.astype(np.float32), (8, 8), antialias=True)), 0, 255), tf.uint8)
    logits = server.keras_models[2](tf.cast(resized, tf.float32))
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    with ServingClient(target, "no_such_model", retries=0) as client:
        with pytest.raises(ServingError, match=rf"no_such_model' at {target} failed: NOT_FOUND"):
            client.metadata()
