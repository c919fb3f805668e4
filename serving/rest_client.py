"""A TF Serving REST API client, for victims reachable only on the REST port (8501).

TF Serving's REST API (`tensorflow_serving/g3doc/api_rest.md`) answers
``GET /v1/models/NAME[/versions/V]/metadata`` with the signature defs as JSON (the
`SignatureDefMap` proto in its JSON mapping) and ``POST /v1/models/NAME[/versions/V]:predict``
with ``{"predictions": ...}`` for a row-format (``"instances"``) request: one list of rows for a
single output, one object per row for several. `RestClient` reads the metadata into the same
`serving.signature.Signature` the gRPC client builds, and shares with it (`serving.transport`)
the argument checks, the image adaptation, batches with a bounded number of requests in flight,
retries of 503 (UNAVAILABLE) with backoff, and `ServingError` with the status code the HTTP
status maps back to. Standard library only (`http.client`, `json`) besides the protos.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Sequence

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from common.constraints import check_url
from common.errors import invalid
from serving.signature import Signature, SignatureInfo
from serving.status import HTTP_STATUS
from serving.transport import BaseClient, _Stopped, adapt_images

__all__ = ["RestClient"]

logger = logging.getLogger(__name__)

# HTTP status -> gRPC code (the inverse of TF Serving's mapping; 400 is INVALID_ARGUMENT)
_CODES = {status: code for code, status in reversed(list(HTTP_STATUS.items()))}
_CODES[400] = grpc.StatusCode.INVALID_ARGUMENT
_CODES[409] = grpc.StatusCode.ABORTED


class RestClient(BaseClient):
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
        check_url("rest", url)
        if not isinstance(model, str) or "/" in model or ":" in model:
            raise invalid("model", model, "a model name")
        super().__init__(model=model, version=version, signature=signature, timeout=timeout,
                         max_in_flight=max_in_flight, batch_size=batch_size, retries=retries,
                         backoff=backoff)
        parsed = urllib.parse.urlsplit(url)
        self.url = self.address = f"{parsed.scheme}://{parsed.netloc}"
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        self._headers = {"Content-Type": "application/json"}
        if api_key is not None:
            self._headers["x-api-key"] = api_key
        self._prefix = f"/v1/models/{urllib.parse.quote(model)}" + (
            f"/versions/{version}" if version is not None else "")
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []

    def _release(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __repr__(self) -> str:
        return f"RestClient(url={self.url!r}, model={self.model!r})"

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
            self._check_open()
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
                    self._count(requests=1)
                    return decoded
                try:
                    details = json.loads(data).get("error", "")
                except (ValueError, AttributeError):
                    details = data[:200].decode("utf-8", "replace")
                code = _CODES.get(status, grpc.StatusCode.UNKNOWN)
                retry = code == grpc.StatusCode.UNAVAILABLE
            if not retry or attempt >= self.retries:
                raise self._error(rpc, code, details)
            attempt += 1
            self._wait_to_retry(rpc, code, attempt, self._backoff_delay(attempt - 1))

    # -- metadata ---------------------------------------------------------------------------------
    def _signature_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        body = self._request("GET", self._prefix + "/metadata", None, "GetModelMetadata")
        try:
            return json_format.ParseDict(body["metadata"]["signature_def"],
                                         get_model_metadata_pb2.SignatureDefMap(),
                                         ignore_unknown_fields=True)
        except (KeyError, TypeError, json_format.ParseError) as err:
            raise self._error("GetModelMetadata", grpc.StatusCode.INTERNAL,
                              f"malformed metadata response: {err}") from err

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
        if not len(images):
            return {n: np.zeros((0,), sig.outputs[n].dtype) for n in names}

        def one(first: int, stop: threading.Event) -> dict[str, np.ndarray]:
            if stop.is_set():  # an earlier batch failed: send nothing more
                raise _Stopped()
            batch = adapt_images(images[first:first + self.batch_size], info)
            if on_send is not None:
                on_send(first, len(batch))
            decoded = self._predict_batch(batch, sig, names)
            if on_result is not None:
                on_result(first, decoded)
            return decoded

        results = self._in_batches(len(images), one, prefix="rest-predict")
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
        self._count(queries=len(batch))
        return decoded
