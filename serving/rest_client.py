"""A TF Serving REST API client, for victims reachable only on the REST port (8501).

TF Serving's REST API (`tensorflow_serving/g3doc/api_rest.md`) answers
``GET /v1/models/NAME[/versions/V]/metadata`` with the signature defs as JSON (the
`SignatureDefMap` proto in its JSON mapping) and ``POST /v1/models/NAME[/versions/V]:predict``
with ``{"predictions": ...}`` for a row-format (``"instances"``) request: one list of rows for a
single output, one object per row for several. `RestClient` reads the metadata into the same
`serving.client.Signature` the gRPC client builds, adapts images the same way
(`serving.client.adapt_images`), sends rows in batches with a bounded number of requests in
flight, retries 503 (UNAVAILABLE) with backoff, and raises the gRPC client's `ServingError` with
the status code the HTTP status maps back to. Standard library only (`http.client`, `json`).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import random
import threading
import time
import types
import urllib.parse
from collections.abc import Callable, Sequence

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from common.errors import invalid
from serving.client import ServingError, Signature, SignatureInfo, _tensor_info, adapt_images
from serving.status import HTTP_STATUS

__all__ = ["RestClient"]

logger = logging.getLogger(__name__)

# HTTP status -> gRPC code (the inverse of TF Serving's mapping; 400 is INVALID_ARGUMENT)
_CODES = {status: code for code, status in reversed(list(HTTP_STATUS.items()))}
_CODES[400] = grpc.StatusCode.INVALID_ARGUMENT
_CODES[409] = grpc.StatusCode.ABORTED
_MAX_BACKOFF_S = 30.0


class RestClient:
    """TF Serving REST for one model (thread-safe: one HTTP connection per worker thread).

    Args:
        url: ``http://host:port`` (``https://`` for TLS).
        model: the model name; `version` pins a version (latest otherwise).
        signature: the signature to call.
        api_key: sent as the ``x-api-key`` header (a gateway in front of TF Serving).
        timeout: seconds per HTTP request.
        max_in_flight: requests outstanding at once; batch_size: rows per request.
        retries: retries of a request answered 503 or cut by a connection error.
    """

    def __init__(self, url: str, model: str, *, version: int | None = None,
                 signature: str = "serving_default", api_key: str | None = None,
                 timeout: float = 60.0, max_in_flight: int = 4, batch_size: int = 64,
                 retries: int = 5, backoff: float = 0.2) -> None:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if (parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname
                or parsed.path not in ("", "/") or parsed.query):
            raise invalid("rest", url, "a TF Serving REST address http://HOST:PORT")
        try:
            port = parsed.port
        except ValueError as err:
            raise invalid("rest", url, "a TF Serving REST address http://HOST:PORT") from err
        if not isinstance(model, str) or not model or "/" in model or ":" in model:
            raise invalid("model", model, "a model name")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 0):
            raise invalid("version", version, "a non-negative integer or None")
        if not isinstance(signature, str) or not signature:
            raise invalid("signature", signature, "a signature name")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise invalid("timeout", timeout, "a positive number of seconds")
        for name, value in (("max_in_flight", max_in_flight), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid(name, value, "an integer >= 1")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = port or (443 if self._https else 80)
        self.model = model
        self.version = version
        self.signature_name = signature
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        self.batch_size = batch_size
        self.retries = retries
        self.backoff = backoff
        self._headers = {"Content-Type": "application/json"}
        if api_key is not None:
            self._headers["x-api-key"] = api_key
        self._prefix = f"/v1/models/{urllib.parse.quote(model)}" + (
            f"/versions/{version}" if version is not None else "")
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._queries = 0
        self._requests = 0
        self._signature: Signature | None = None
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection; further calls raise RuntimeError. Idempotent."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __repr__(self) -> str:
        return f"RestClient(url={self.url!r}, model={self.model!r})"

    @property
    def queries(self) -> int:
        """Rows answered by successful :predict requests."""
        with self._lock:
            return self._queries

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    # -- HTTP -------------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _request(self, method: str, path: str, body: bytes | None, rpc: str) -> dict:
        attempt = 0
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError(f"{self!r} is closed")
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=self._headers)
                response = conn.getresponse()
                status, data = response.status, response.read()
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                self._local.conn = None
                code, details, retry = grpc.StatusCode.UNAVAILABLE, f"{err}", True
            else:
                if status == 200:
                    try:
                        decoded = json.loads(data)
                    except ValueError as err:
                        raise self._error(rpc, grpc.StatusCode.INTERNAL,
                                          f"malformed response: {err}") from err
                    with self._lock:
                        self._requests += 1
                    return decoded
                try:
                    details = json.loads(data).get("error", "")
                except (ValueError, AttributeError):
                    details = data[:200].decode("utf-8", "replace")
                code = _CODES.get(status, grpc.StatusCode.UNKNOWN)
                retry = code == grpc.StatusCode.UNAVAILABLE
            if not retry or attempt >= self.retries:
                raise self._error(rpc, code, details)
            delay = min(_MAX_BACKOFF_S, self.backoff * 2**attempt)
            delay = delay / 2 + random.uniform(0, delay / 2)
            attempt += 1
            logger.info("%s on model '%s' at %s: %s; retry %d/%d in %.2fs", rpc, self.model,
                        self.url, code.name, attempt, self.retries, delay)
            time.sleep(delay)

    def _error(self, rpc: str, code: grpc.StatusCode, details: str) -> ServingError:
        return ServingError(target=self.url, model=self.model, rpc=rpc, code=code,
                            details=details)

    # -- metadata ---------------------------------------------------------------------------------
    def signature(self, *, refresh: bool = False) -> Signature:
        """The signature's inputs and outputs from ``GET .../metadata`` (cached)."""
        with self._lock:
            if self._signature is not None and not refresh:
                return self._signature
        body = self._request("GET", self._prefix + "/metadata", None, "GetModelMetadata")
        try:
            defs = body["metadata"]["signature_def"]
            signature_map = json_format.ParseDict(defs, get_model_metadata_pb2.SignatureDefMap(),
                                                  ignore_unknown_fields=True)
        except (KeyError, TypeError, json_format.ParseError) as err:
            raise self._error("GetModelMetadata", grpc.StatusCode.INTERNAL,
                              f"malformed metadata response: {err}") from err
        if self.signature_name not in signature_map.signature_def:
            available = sorted(k for k in signature_map.signature_def
                               if k != "__saved_model_init_op")
            raise invalid("signature", self.signature_name,
                          f"one of the signatures of model '{self.model}' at {self.url}: "
                          f"{available}")
        definition = signature_map.signature_def[self.signature_name]
        signature = Signature(
            name=self.signature_name, method_name=definition.method_name,
            inputs=types.MappingProxyType(
                {k: _tensor_info(k, v) for k, v in sorted(definition.inputs.items())}),
            outputs=types.MappingProxyType(
                {k: _tensor_info(k, v) for k, v in sorted(definition.outputs.items())}),
            defaults=frozenset(definition.defaults),
        )
        with self._lock:
            self._signature = signature
        return signature

    # -- predict ----------------------------------------------------------------------------------
    def predict(self, images: np.ndarray, info: SignatureInfo, outputs: Sequence[str], *,
                on_send: Callable[[int, int], None] | None = None,
                on_result: Callable[[int, dict], None] | None = None) -> dict[str, np.ndarray]:
        """Answers of `outputs` for `images` [N, H, W, C] (adapted to `info`: size, channels,
        dtype), rows in order; the hooks are those of `ServingClient.predict` (with a dict)."""
        images = np.asarray(images)
        sig = self.signature()
        names = list(outputs)
        missing = [n for n in names if n not in sig.outputs]
        if missing:
            raise invalid("outputs", names, f"output names among {sorted(sig.outputs)}")
        starts = list(range(0, len(images), self.batch_size))
        if not starts:
            return {n: np.zeros((0,), sig.outputs[n].dtype) for n in names}
        results: list[dict | None] = [None] * len(starts)

        def one(index: int, first: int) -> None:
            batch = adapt_images(images[first:first + self.batch_size], info)
            if on_send is not None:
                on_send(first, len(batch))
            results[index] = decoded = self._predict_batch(batch, sig, names)
            if on_result is not None:
                on_result(first, decoded)

        with concurrent.futures.ThreadPoolExecutor(
                max_workers=min(self.max_in_flight, len(starts)),
                thread_name_prefix="rest-predict") as pool:
            futures = [pool.submit(one, i, s) for i, s in enumerate(starts)]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return {n: np.concatenate([r[n] for r in results], axis=0) for n in names}

    def _predict_batch(self, batch: np.ndarray, sig: Signature,
                       names: list[str]) -> dict[str, np.ndarray]:
        if np.issubdtype(batch.dtype, np.floating) and np.array_equal(batch, np.rint(batch)):
            rows = batch.astype(np.int64).tolist()  # integer-valued floats: shorter JSON
        else:
            rows = batch.tolist()
        body = json.dumps({"signature_name": self.signature_name, "instances": rows})
        answer = self._request("POST", self._prefix + ":predict", body.encode(), "Predict")
        predictions = answer.get("predictions") if isinstance(answer, dict) else None
        if not isinstance(predictions, list) or len(predictions) != len(batch):
            raise self._error("Predict", grpc.StatusCode.INTERNAL,
                              f"malformed response: expected {len(batch)} predictions")
        decoded = {}
        for name in names:
            dtype = sig.outputs[name].dtype
            if predictions and isinstance(predictions[0], dict):
                try:
                    column = [row[name] for row in predictions]
                except KeyError as err:
                    raise self._error("Predict", grpc.StatusCode.INTERNAL,
                                      f"malformed response: no output '{name}'") from err
            elif len(sig.outputs) == 1:
                column = predictions
            else:
                raise self._error("Predict", grpc.StatusCode.INTERNAL,
                                  "malformed response: several outputs expected per row")
            decoded[name] = np.asarray(column, dtype=None if dtype.kind == "O" else dtype)
        with self._lock:
            self._queries += len(batch)
        return decoded
