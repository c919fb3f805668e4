"""Fixtures for the gateway tests: the gateway in-process in front of the embedded model server.

The upstream is `tests/serving/conftest.py`'s `server` (the `tiny` 8x8 classifier with
`probabilities` and `logits` outputs, and the `examples` model for Classify/Regress). `gateway`
is a factory: `gateway(policy=..., store=..., upstream=...)` starts one on a free loopback port
and stops it after the test. `BrightIsAttack` is a stand-in OOD detector for `bright` images
(`dark` ones are benign).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import codec, testing
from serving.gateway.auth import generate_key, hash_key
from serving.gateway.store import SQLiteStore, new_record

IMAGE_SHAPE = (8, 8, 3)


def predict_request(images: np.ndarray, model: str = "tiny") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs["images"].CopyFrom(codec.from_ndarray(images, use_tensor_content=True))
    return request


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)


def bright(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(200, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)


def dark(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60, (n, *IMAGE_SHAPE), dtype=np.uint8)


class BrightIsAttack:
    """A stand-in OOD detector: an image is an attack query when its mean pixel is above 127."""

    threshold = 0.5
    input_shape = IMAGE_SHAPE

    def __init__(self) -> None:
        self.calls = 0

    def score(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (x.reshape(len(x), -1).mean(axis=1) / 255.0).astype(np.float32)



class Target:
    """Stubs on one channel to a gateway (or a server), with the API key as metadata."""

    def __init__(self, address: str, key: str | None = None, header: str = "x-api-key",
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.address = address
        if credentials is None:
            self.channel = grpc.insecure_channel(address)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=[
                ("grpc.ssl_target_name_override", "localhost")])
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.metadata = ()
        if key is not None:
            value = f"Bearer {key}" if header == "authorization" else key
            self.metadata = ((header, value),)

    def predict(self, x: np.ndarray, model: str = "tiny", timeout: float = 10.0):
        return self.predict_stub.Predict(predict_request(x, model), timeout=timeout,
                                         metadata=self.metadata)

    def predict_raw(self, request_bytes: bytes, timeout: float = 10.0) -> bytes:
        call = self.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        return call(request_bytes, timeout=timeout, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def gateway(server, tmp_path):
    """Factory: start a `Gateway` in-process through `serving.testing` (default: in front of
    `server`, SQLite state in tmp_path; not waiting for the upstream, which a test may keep
    down on purpose); returns the `Gateway`."""
    started = []

    def start(policy=None, *, store=None, upstream: str | None = None, metrics_port: int = 0,
              state: str | None = None, ood_detector=None, **kwargs):
        state = state or f"sqlite:{tmp_path / 'gateway.db'}"
        if store is None:
            store = SQLiteStore(state[len("sqlite:"):])
        running = testing.gateway(upstream or f"127.0.0.1:{server.port}", policy=policy,
                                  state=state, store=store, metrics_port=metrics_port,
                                  ood_detector=ood_detector, wait=False, **kwargs)
        started.append((running, store))
        return running.obj

    yield start
    for running, store in started:
        running.stop()
        store.close()


def add_client(store, name: str, **limits) -> str:
    key = generate_key()
    store.add_client(new_record(name, hash_key(key), **limits))
    return key
